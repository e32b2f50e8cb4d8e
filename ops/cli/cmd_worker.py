"""`coda worker`: one cloud worker; start it N times and the consumer group splits the partitions."""

from __future__ import annotations

import argparse

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", default="0", help="worker id: names its index replica and stats file")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.worker import run_worker  # heavy imports only for this command

    run_worker(settings, args.id)
    return 0
