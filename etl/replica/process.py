"""The replica in a child process, for benchmarks and the `make run` replay.

In-process `ReplicaServer` shares the GIL with its client; a benchmark or a replay that
stands for the real portal runs the server in a process of its own.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def control(method: str, url: str, timeout: float = 10.0) -> Any:
    """Call a replica control endpoint (`/_replica/…`) and return its JSON answer."""
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def replica_process(*, at: str = "final", port: int = 0, live: bool = False,
                    speed: float = 1.0, scenario: str = "kg2021", precincts: int | None = None,
                    seed: int | None = None, start_timeout: float = 15.0) -> Iterator[str]:
    """Run `python -m etl.replica` in a child process; yield its base URL."""
    port = port or free_port()
    command = [sys.executable, "-m", "etl.replica", "--scenario", scenario, "--port", str(port),
               "--at", at]
    if precincts is not None:
        command += ["--precincts", str(precincts)]
    if seed is not None:
        command += ["--seed", str(seed)]
    if live:
        command += ["--live", "--speed", str(speed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(int(start_timeout / 0.1)):
            try:
                control("GET", f"{base_url}/_replica/state")
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"the replica exited with {process.returncode}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the replica did not start on port {port}")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)
