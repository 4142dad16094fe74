"""The regions of the Kyrgyz Republic on the map, and which portal region is which shape.

The boundaries (`regions.geojson` beside this file) are OCHA's ADM1 layer of 2018; their
names differ from the portal's (`г.Бишкек` on the map, `г. Бишкек` / `Бишкек шаары` on the
portal), so the match is an explicit table keyed by the shape's `ADM1_PCODE`, not a fuzzy
guess. Voters abroad have no shape: the report shows them apart.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

GEOJSON_PATH = Path(__file__).with_name("regions.geojson")

ABROAD = "abroad"

# Portal region name (Russian and Kyrgyz sections) → the shape's ADM1_PCODE, or ABROAD.
PORTAL_REGIONS: dict[str, str] = {
    "г. Бишкек": "KG11000000000", "Бишкек шаары": "KG11000000000",
    "г. Ош": "KG21000000000", "Ош шаары": "KG21000000000",
    "Баткенская область": "KG05000000000", "Баткен облусу": "KG05000000000",
    "Джалал-Абадская область": "KG03000000000", "Жалал-Абад облусу": "KG03000000000",
    "Иссык-Кульская область": "KG02000000000", "Ысык-Көл облусу": "KG02000000000",
    "Нарынская область": "KG04000000000", "Нарын облусу": "KG04000000000",
    "Ошская область": "KG06000000000", "Ош облусу": "KG06000000000",
    "Таласская область": "KG07000000000", "Талас облусу": "KG07000000000",
    "Чуйская область": "KG08000000000", "Чүй облусу": "KG08000000000",
    "За рубежом (МИД КР)": ABROAD, "Чет өлкөлөр (КР ТИМ)": ABROAD,
}

# Decimal places kept in the map's coordinates: 2 is about 1 km, below a pixel of a
# 600-pixel-wide map of the country, and cuts the embedded outline from 1.1 MB to ~0.1 MB.
COORDINATE_DECIMALS = 2


@dataclass(frozen=True)
class RegionMatch:
    """Where a portal region goes: a shape (pcode), abroad, or nowhere (unknown name)."""

    name: str
    pcode: str | None

    @property
    def abroad(self) -> bool:
        """True for voters abroad (no shape on the map)."""
        return self.pcode == ABROAD


def match_region(portal_name: str) -> RegionMatch:
    """The shape of a portal region; an unknown name matches nothing (and is listed apart)."""
    key = " ".join(portal_name.split())
    return RegionMatch(portal_name, PORTAL_REGIONS.get(key))


@cache
def region_shapes() -> dict[str, Any]:
    """The regions as a GeoJSON FeatureCollection, coordinates rounded, properties trimmed."""
    source = json.loads(GEOJSON_PATH.read_text(encoding="utf-8"))
    features = []
    for feature in source["features"]:
        props = feature["properties"]
        features.append({
            "type": "Feature",
            "properties": {"pcode": props["ADM1_PCODE"], "name_en": props["ADM1_EN"],
                           "name_ru": props["ADM1_RU"]},
            "geometry": {"type": feature["geometry"]["type"],
                         "coordinates": _clockwise(feature["geometry"]["type"],
                                                   _rounded(feature["geometry"]["coordinates"]))},
        })
    return {"type": "FeatureCollection", "features": features}


def _rounded(coordinates: Any) -> Any:
    if coordinates and isinstance(coordinates[0], (int, float)):
        return [round(float(c), COORDINATE_DECIMALS) for c in coordinates]
    if coordinates and isinstance(coordinates[0], list) and coordinates[0] \
            and isinstance(coordinates[0][0], (int, float)):
        ring: list[list[float]] = []
        for point in coordinates:
            rounded = [round(float(c), COORDINATE_DECIMALS) for c in point]
            if not ring or ring[-1] != rounded:  # rounding merges neighbours: drop repeats
                ring.append(rounded)
        return ring
    return [_rounded(part) for part in coordinates]


def _signed_area(ring: list[list[float]]) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2


def _clockwise(kind: str, coordinates: Any) -> Any:
    """Outer rings clockwise, holes counter-clockwise: what d3-geo (Vega) expects.

    The file follows RFC 7946 (outer rings counter-clockwise); drawn as it is, d3's
    spherical polygons would cover the whole globe except each region.
    """
    polygons = [coordinates] if kind == "Polygon" else coordinates
    fixed = []
    for polygon in polygons:
        rings = []
        for index, ring in enumerate(polygon):
            outer = index == 0
            rings.append(ring[::-1] if (_signed_area(ring) > 0) == outer else ring)
        fixed.append(rings)
    return fixed[0] if kind == "Polygon" else fixed
