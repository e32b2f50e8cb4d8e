"""`coda bench <suite> --out FILE.json`: measured figures beside their ceilings, plus FILE.md."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

from streams.settings import Settings

SUITES = ("ingest", "match", "device", "e2e", "fleet", "scale", "stages", "capacity")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--out", type=Path, help="JSON file (default out/bench/<suite>.json); .md beside it")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--from", dest="sources", type=Path, action="append",
                        help="capacity: a bench JSON to take unit costs from (repeatable: scale, stages, fleet, match, device)")
    parser.add_argument("--large", action="store_true", help="match: add 1M users; fleet: add a 10,000-device daily cycle in one fleet (both long)")
    parser.add_argument("--large-only", action="store_true",
                        help="fleet: only the 10,000-device daily cycle (the sizes and Flower left out)")
    parser.add_argument("--users", type=int, help="scale: users in the cloud workers' log (default 1,000; --quick 120)")
    parser.add_argument("--devices", type=int, help="scale: devices in the fleets' daily cycle (default 400; --quick 40)")
    parser.add_argument("--fleet-processes", type=int,
                        help="fleet: fleet processes in the consumer group for every size and the 10,000-device "
                             "cycle (default 1)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    out = args.out or Path("out/bench") / f"{args.suite}.json"
    module = importlib.import_module(f"ops.bench.{args.suite}")
    names = module.run.__code__.co_varnames
    kwargs = {"settings": settings} if "settings" in names else {}
    if "large" in names:
        kwargs["large"] = args.large
    if "large_only" in names:
        kwargs["large_only"] = args.large_only
    elif args.large_only:
        raise SystemExit(f"--large-only is a fleet option, not {args.suite}'s")
    if "sources" in names:
        kwargs["sources"] = args.sources
    sized = {k: v for k in ("users", "devices") if (v := getattr(args, k, None)) is not None}
    if sized and "sizes" not in inspect.signature(module.run).parameters:
        raise SystemExit(f"--users and --devices size the scale suite, not {args.suite}")
    if sized:
        kwargs["sizes"] = sized
    if (processes := getattr(args, "fleet_processes", None)) is not None:
        if "fleets" not in inspect.signature(module.run).parameters:
            raise SystemExit(f"--fleet-processes is a fleet option, not {args.suite}'s")
        if processes < 1:
            raise SystemExit(f"--fleet-processes must be at least 1, got {processes}")
        kwargs["fleets"] = (processes,)
    module.run(out, args.quick, **kwargs)
    print(out.with_suffix(".md").read_text())
    print(f"wrote {out}")
    json.loads(out.read_text())  # the file is valid JSON
    return 0
