"""Airflow's `[core] hostname_callable` for several Celery workers on one machine.

Airflow records the hostname of the process that runs a task instance (and of every
scheduler, triggerer and worker job). Two workers on the same machine would report the
same name, and nobody could tell which of them ran what: each worker process of
`make cluster` gets its own `CEC_HOSTNAME`. Elsewhere (one worker per machine or container)
the variable is unset and the machine's FQDN is used, as Airflow does by default.
"""

from __future__ import annotations

import os
import socket

HOSTNAME_ENV = "CEC_HOSTNAME"


def node_hostname() -> str:
    """`CEC_HOSTNAME` when set, else the machine's fully qualified domain name."""
    return os.environ.get(HOSTNAME_ENV, "").strip() or socket.getfqdn()
