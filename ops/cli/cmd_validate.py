"""`coda validate FILE`: check a behaviour-event log against the input contract before publishing it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streams.settings import Settings

if TYPE_CHECKING:
    from ops.replay.contract import Validation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="JSON Lines of behaviour events (.gz too)")
    parser.add_argument("--lenient", action="store_true", help="drop unknown fields (and count them) instead of refusing the line")
    parser.add_argument("--show", type=int, default=10, help="how many problems to list with their line numbers")


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """The options `coda demo --events` and `coda replay --events` share with `coda validate`."""
    parser.add_argument("--lenient", action="store_true",
                        help="--events: drop unknown fields (and count them) instead of refusing the line")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="--events: publish the valid lines of a file with errors (the skipped count is reported)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay.contract import validate_file

    result = validate_file(args.file, args.lenient)
    print("\n".join(result.report(args.show)))
    return 0 if result.ok else 1


def checked_events(path: Path, lenient: bool, skip_invalid: bool) -> Validation:
    """Validate a whole file before anything is published: errors stop the run unless `skip_invalid`."""
    from ops.replay.contract import validate_file

    result = validate_file(path, lenient)
    if not result.ok and not skip_invalid:
        advice = "nothing was published; fix the lines above, or pass --skip-invalid to publish only the valid ones"
        raise ValueError("\n".join([*result.report(), advice]))
    if not result.ok or result.dropped:
        print("\n".join(result.report(3)), file=sys.stderr)
    if not result.events:
        raise ValueError(f"{path}: no valid events to publish")
    return result
