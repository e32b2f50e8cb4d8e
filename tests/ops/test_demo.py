"""`coda demo --events FILE` as a user runs it: own stack, workers, fleet, exports, checks, stack stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ops.datasets import load_dataset

BAD_LINES = [
    '{"user_id": "u1", "ts": 1699921525, "item_id": "x", "item_tag": ["a"], "action": "click"}',
    '{"user_id": "u1", "item_id": "x", "item_tags": ["a"], "action": "click"}',
    '{"user_id": "u1", "ts": "soon", "item_id": "x", "item_tags": ["a"], "action": "click"}',
    "not json",
]


def _numeric_profiles(events: list[dict]) -> list[str]:  # type: ignore[type-arg]
    """The synthetic log as real logs look: numeric and boolean profile fields."""
    out = []
    for e in events:
        profile = dict(e["profile"])
        profile["city_tier"] = int(profile["city_tier"])
        profile["vip"] = profile["phone"] == "high"
        out.append(json.dumps({**e, "profile": profile}))
    return out


def test_demo_replays_an_events_file_with_numeric_profiles_and_bad_lines(tmp_path: Path) -> None:
    """The main job on a user's own log (numeric profiles, 4 bad lines, --skip-invalid) passes and counts them."""
    lines = _numeric_profiles(load_dataset("synthetic", n_users=24, days=3, events_per_user=(6, 12), seed=4).events)
    for i, bad in enumerate(BAD_LINES):
        lines.insert(5 + 7 * i, bad)
    bad_numbers = sorted(i + 1 for i, line in enumerate(lines) if line in BAD_LINES)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out, state = tmp_path / "out", tmp_path / "state"
    base = [sys.executable, "-m", "ops.cli", "--state-dir", str(state), "demo", "--events", str(events),
            "--out", str(out), "--namespace", "t"]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "nothing was published" in refused.stderr
    assert f"line {bad_numbers[0]}: unknown field item_tag — did you mean item_tags?" in refused.stderr
    assert not (state / "stack.json").exists() and not out.exists()  # checked before the stack started
    done = subprocess.run([*base, "--skip-invalid"], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("PASS"), done.stdout
    for name in ("vectors.jsonl", "samples.jsonl", "matches.jsonl", "batches.jsonl", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and all(check["ok"] for check in summary["checks"].values()), summary["checks"]
    assert summary["input"]["rejected"] == len(BAD_LINES)
    assert summary["input"]["rejected_by_reason"] == {"invalid_json": 1, "missing_field": 1, "unknown_field": 1,
                                                      "wrong_type": 1}
    assert summary["events"] == len(lines) - len(BAD_LINES) == summary["input"]["accepted"]
    assert summary["dead_letters"]["total"] == 0
    letters = [json.loads(x) for x in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert [x["line"] for x in letters] == bad_numbers
    assert f"events in       {summary['events']:,}, 4 lines rejected" in done.stdout
    row = json.loads((out / "batches.jsonl").read_text().splitlines()[0])
    assert {"device", "user", "day", "batch_id", "sample_ids", "sample_owners", "bytes"} <= set(row)
    assert not (state / "stack.json").exists()  # the demo stopped the stack it started
