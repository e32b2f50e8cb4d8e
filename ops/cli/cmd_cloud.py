"""`coda cloud train-global`: train the global DIN on the cloud's sample pool and publish it."""

from __future__ import annotations

import argparse
import asyncio
import json

from agents.globalmodel import train_and_publish
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="job", required=True)
    job = sub.add_parser("train-global", help="train the global model on the samples topic and publish it")
    job.add_argument("--until-day", type=int, help="only samples up to this event-time day (default: all)")
    job.add_argument("--epochs", type=int, default=2)
    job.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, settings: Settings) -> int:
    published = asyncio.run(train_and_publish(settings, args.until_day, args.epochs, args.seed))
    print(json.dumps(published, indent=1))
    return 0
