"""`python -m etl.replica`: serve a scenario of the CEC portal over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from etl.replica.scenario import load_scenario, scenario_ids
from etl.replica.server import Faults, Replica, new_event_loop, start_server

logger = logging.getLogger("etl.replica")

EPILOG = """\
Live mode: starting at --at (default: the first snapshot), snapshot i is shown for
(portal time of snapshot i+1 - portal time of snapshot i) / SPEED seconds of wall time;
the last snapshot stays. E.g. --live --speed 60 plays the 25 minutes from polls closing
to the formula error in 25 s, but the days of recount take hours: use --speed 3600 or
POST /_replica/goto?label=... to jump.

Control endpoints: GET /_replica/state, GET /_replica/snapshots,
POST /_replica/goto?at=N, ?label=final or ?time=ISO (portal time), GET|POST|DELETE /_replica/faults
(POST body: a JSON object of the fault switches below, e.g. {"status": 503,
"status_count": 2, "retry_after": 1}).

Fault counts are per path (path and query), counted since faults were last set;
leaving a count out applies the fault to every request.
"""


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m etl.replica",
        description="Replica of the CEC results portal replaying an election night.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", default="kg2021", choices=scenario_ids())
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=None, help="default: the scenario's own")
    parser.add_argument(
        "--precincts", type=int, default=None,
        help="size of a sized scenario (synthetic: default 100000)",
    )
    parser.add_argument(
        "--at",
        default=None,
        help="snapshot index (negative from the end) or label; default: last (first if --live)",
    )
    parser.add_argument("--live", action="store_true", help="advance through the timeline")
    parser.add_argument("--speed", type=float, default=1.0, help="live mode: portal s per wall s")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to answers")
    parser.add_argument("--fault-status", type=int, default=None, help="e.g. 429, 500, 503")
    parser.add_argument("--fault-count", type=int, default=None, help="first K per path")
    parser.add_argument("--retry-after", type=int, default=None)
    parser.add_argument("--hang", type=float, default=0.0, help="seconds to hold answers")
    parser.add_argument("--hang-count", type=int, default=None, help="first K per path")
    parser.add_argument("--truncate", action="store_true", help="send half bodies, close")
    parser.add_argument("--truncate-count", type=int, default=None, help="first K per path")
    parser.add_argument("--trickle", type=float, default=0.0,
                        help="send bodies one byte every this many seconds")
    parser.add_argument("--trickle-count", type=int, default=None, help="first K per path")
    parser.add_argument("--fault-path", default=None, help="regex: fault only these paths")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    started = time.perf_counter()
    try:
        scenario = load_scenario(args.scenario, args.seed, args.precincts)
    except ValueError as exc:
        parser.error(str(exc))
    logger.info(
        "scenario %s (seed %d) built in %.2fs: %d snapshots",
        scenario.scenario_id,
        scenario.seed,
        time.perf_counter() - started,
        len(scenario.snapshots),
    )
    faults = Faults(
        latency=args.latency,
        status=args.fault_status,
        status_count=args.fault_count,
        retry_after=args.retry_after,
        hang=args.hang,
        hang_count=args.hang_count,
        truncate=args.truncate,
        truncate_count=args.truncate_count,
        trickle=args.trickle,
        trickle_count=args.trickle_count,
        path_regex=args.fault_path,
    )
    at = args.at if args.at is not None else (0 if args.live else -1)
    replica = Replica(scenario, at=at, live=args.live, speed=args.speed, faults=faults)

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(start_server(replica, args.host, args.port))
    snapshot = scenario.snapshots[replica.index]
    port = server.sockets[0].getsockname()[1]  # the real one when --port 0
    logger.info(
        "serving http://%s:%d/ru/results/ at snapshot %d (%s)%s",
        args.host,
        port,
        snapshot.index,
        snapshot.label,
        f", live x{args.speed:g}" if args.live else "",
    )
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        server.close()
        for connection in list(replica.connections):
            connection.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


if __name__ == "__main__":
    main()
