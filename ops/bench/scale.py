"""`coda bench scale`: throughput with 1 and 2 cloud workers and with 1 and 2 fleet processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ops.bench.common import table, write_report
from streams.settings import Settings


def run(out: Path, quick: bool, settings: Settings) -> dict[str, Any]:
    from ops.bench import fleet, ingest

    cloud = ingest.run(out.with_name(out.stem + "-ingest.json"), quick, settings, workers=(1, 2))
    devices = fleet.run(out.with_name(out.stem + "-fleet.json"), True, settings, fleets=(1, 2))
    m = cloud["measurements"]
    one, two = m["pipeline-1"]["events_per_s"], m.get("pipeline-2", {}).get("events_per_s")
    f = devices["runs"][0]["ways"]
    f1, f2 = f["fleet-x1"]["devices_per_s"], f["fleet-x2"]["devices_per_s"]
    result = {"cpus": os.cpu_count(),
              "cloud_workers": {"1": one, "2": two, "efficiency": (two / one / 2) if two else None},
              "fleets": {"1": f1, "2": f2, "efficiency": f2 / f1 / 2},
              "note": "all processes share this machine's cores with the broker and the load generator"}
    rows = [["cloud workers (events/s)", one, two, result["cloud_workers"]["efficiency"]],
            ["device fleets (devices/s)", f1, f2, result["fleets"]["efficiency"]]]
    md = (f"# bench scale\n\nMachine: {os.cpu_count()} cores, shared by the broker, the load generator and the "
          "processes under test. Efficiency = throughput(2) / (2 × throughput(1)).\n\n")
    md += table(["what", "1 process", "2 processes", "efficiency"], rows) + "\n"
    write_report(out, "scale", result, md)
    return result
