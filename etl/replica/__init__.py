"""Portal replica: a real HTTP server replaying an election night on the CEC portal.

`load_scenario("kg2021")` builds the synthetic night (ground truth per snapshot);
`ReplicaServer` serves it in-process; `python -m etl.replica` serves it from the shell.
"""

from __future__ import annotations

from etl.replica.scenario import Scenario, Snapshot, Tally, load_scenario
from etl.replica.server import Faults, ReplicaServer

__all__ = ["Faults", "ReplicaServer", "Scenario", "Snapshot", "Tally", "load_scenario"]
