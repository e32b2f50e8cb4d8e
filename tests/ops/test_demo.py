"""`coda demo --events FILE` as a user runs it: own stack, workers, fleet, exports, checks, stack stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ops.datasets import load_dataset, write_events_jsonl


def test_demo_replays_an_events_file(tmp_path: Path) -> None:
    """The main job on a user's own event log writes every export and passes its own checks."""
    events = tmp_path / "events.jsonl"
    write_events_jsonl(events, load_dataset("synthetic", n_users=24, days=3, events_per_user=(6, 12), seed=4).events)
    out, state = tmp_path / "out", tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "--state-dir", str(state), "demo", "--events", str(events),
         "--out", str(out), "--namespace", "t"],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("vectors.jsonl", "samples.jsonl", "matches.jsonl", "batches.jsonl", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert all(check["ok"] for check in summary["checks"].values() if "ok" in check), summary["checks"]
    row = json.loads((out / "batches.jsonl").read_text().splitlines()[0])
    assert {"device", "user", "day", "batch_id", "sample_ids", "sample_owners", "bytes"} <= set(row)
    assert not (state / "stack.json").exists()  # the demo stopped the stack it started
