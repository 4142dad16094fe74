"""Benchmarks (`make bench`): each prints its figures and saves them as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def save_report(name: str, report: dict[str, Any]) -> Path:
    """Write a benchmark's figures to `bench/results/<name>.json`; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
