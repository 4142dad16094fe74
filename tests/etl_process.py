"""`python -m etl …` in a process of its own, the way an operator or a scheduler starts it.

The one way tests (and `python -m tests.hostile`) run the CLI in a subprocess: this
interpreter, the repository as working directory, output captured as text, a deadline, and
the exit code left to the caller (never `check=True`: the code is what most tests assert).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def etl_command(*args: str) -> list[str]:
    """The argv of `python -m etl <args>` with this interpreter."""
    return [sys.executable, "-m", "etl", *args]


def etl_env(data: Path, *, inherit_cec: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment with `CEC_DATA_DIR=data` and `extra` on top.

    `inherit_cec=False` drops every `CEC_*` variable first, so the run sees only the
    settings the test gives it.
    """
    base = {k: v for k, v in os.environ.items() if inherit_cec or not k.startswith("CEC_")}
    return base | {"CEC_DATA_DIR": str(data)} | extra


def run_etl(*args: str, env: Mapping[str, str], timeout: float,
            **options: Any) -> subprocess.CompletedProcess[str]:
    """Run `python -m etl <args>` to its end (or `timeout`: `subprocess.TimeoutExpired`)."""
    return subprocess.run(etl_command(*args), env=dict(env), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False, **options)


def start_etl(*args: str, env: Mapping[str, str], **options: Any) -> subprocess.Popen[str]:
    """Start `python -m etl <args>` in the background; the caller waits for it."""
    return subprocess.Popen(etl_command(*args), env=dict(env), cwd=REPO, text=True, **options)
