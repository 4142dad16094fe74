"""Identifiers that reach file paths: election, contest and snapshot ids.

They come from the portal (`data-contest`, link segments), from DAG params and from the
command line, and end up in directory names that are created and removed (`rmtree`).
Each is checked against one strict pattern where it enters, so `../..`, `/`, a space, a
quote or a 10 kB string is refused with a clear error instead of escaping the data dir.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable

# A letter or digit, then letters, digits, `-` or `_`: `jk2021`, `okrug-7`,
# `jk2021-20211128T201800-3f9a0c1b2d4e`. No dot (so no `..`), no slash, at most 128.
IDENTIFIER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class InvalidIdentifierError(ValueError):
    """An id that must not reach a file path; the message says which and why."""


def checked_id(value: object, what: str) -> str:
    """`value` if it is a valid identifier, else `InvalidIdentifierError` naming `what`."""
    if not isinstance(value, str) or IDENTIFIER_PATTERN.fullmatch(value) is None:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "…"
        raise InvalidIdentifierError(
            f"{what} {shown} is not a valid identifier: 1-128 characters, letters, digits, "
            "'-' or '_', starting with a letter or digit"
        )
    return value


def checked_ids(values: Iterable[object], what: str) -> list[str]:
    """Every value checked with `checked_id`."""
    return [checked_id(value, what) for value in values]


def argparse_id(what: str) -> Callable[[str], str]:
    """An argparse `type=` that checks an identifier (a usage error, exit 2, if invalid)."""
    def parse(value: str) -> str:
        try:
            return checked_id(value, what)
        except InvalidIdentifierError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = what.replace(" ", "_")
    return parse
