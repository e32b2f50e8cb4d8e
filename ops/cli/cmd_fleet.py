"""`coda fleet`: run a device fleet process until SIGINT/SIGTERM, with a progress line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from device.fleet import Fleet
from streams.process import tune_gc
from streams.settings import Settings

PROGRESS_EVERY_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id",
        dest="fleet_id",
        default=None,
        help="fleet process id, names its stats file (default fleet-<host>-<pid>)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=0,
        metavar="N",
        help="expected device count, for sizing only: which devices this process hosts "
        "is decided by the partitions it is assigned (start several to split them)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    fleet_id = args.fleet_id or f"fleet-{socket.gethostname()}-{os.getpid()}"
    if args.devices:  # measured: ~7 KB of bookkeeping per hosted device, the rest is bounded by the pool
        logging.getLogger(__name__).info(
            "sizing for %d devices: ~%d MB of device bookkeeping, %d open databases at most",
            args.devices, args.devices * 7 // 1024 + 1, settings.open_databases)
    return asyncio.run(_main(settings, fleet_id, args.quiet))


async def _main(settings: Settings, fleet_id: str, quiet: bool) -> int:
    fleet = Fleet(settings, fleet_id)
    if settings.metrics_host:
        from streams.metrics import Metrics, metrics_port

        fleet.metrics = Metrics("fleet", fleet_id)
        port = fleet.metrics.start(settings.metrics_host, metrics_port(settings.fleet_metrics_port, fleet_id),
                                   settings.state_dir)
        print(f"fleet {fleet_id}: metrics on http://{settings.metrics_host}:{port}/metrics", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    tune_gc()  # after start: the runtime's torch and initial model are frozen with the imports
    print(f"fleet {fleet_id}: group {fleet.group}, stats in {settings.state_dir / 'fleets'}", file=sys.stderr)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=PROGRESS_EVERY_S)
            except TimeoutError:
                if not quiet:
                    print(progress_line(fleet.stats()), file=sys.stderr, flush=True)
    finally:
        await fleet.stop()
    print(progress_line(fleet.stats()), file=sys.stderr)
    return 0


def progress_line(stats: dict) -> str:  # type: ignore[type-arg]
    c = stats.get("counts", {})
    rounds = stats.get("accounting", {}).get("round", {})
    return (
        f"fleet {stats['fleet']}: devices {stats['devices_hosted']} | in {stats['in']} "
        f"processed {stats['processed']} dead {stats['dead_lettered']} | actions {c.get('actions', 0)} "
        f"batches {c.get('batches', 0)} notices {c.get('notices', 0)} | rounds {rounds.get('n', 0)} "
        f"p50 {rounds.get('wall_ms_p50')} ms | partitions {stats.get('partitions')}"
    )
