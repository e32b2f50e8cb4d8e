"""`coda validate` and the check that runs before `coda replay --events` publishes anything."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from streams.kafka import end_offsets
from streams.settings import Settings

GOOD = {"user_id": "u1", "ts": 1_700_000_000, "item_id": "i1", "item_tags": ["a"], "action": "click"}


def _coda(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CODA_PSEUDONYM_KEY": "test-key", **(env or {})})


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _bad_file(tmp_path: Path) -> Path:
    rows: list[object] = [{**GOOD, "ts": GOOD["ts"] + i, "profile": {"age": 30 + i}} for i in range(5)]
    rows.insert(2, {**GOOD, "item_tag": ["x"]})
    rows.append({k: v for k, v in GOOD.items() if k != "ts"})
    return _write(tmp_path / "events.jsonl", rows)


def test_validate_counts_reasons_and_names_lines(tmp_path: Path) -> None:
    """validate prints counts per reason and each problem's line; a file with errors exits 1."""
    done = _coda("validate", str(_bad_file(tmp_path)))
    assert done.returncode == 1
    assert "7 lines, 5 valid events, 2 invalid" in done.stdout
    assert "missing_field 1, unknown_field 1" in done.stdout
    assert "line 3: unknown field item_tag — did you mean item_tags?" in done.stdout
    assert "line 7: missing required field ts" in done.stdout
    ok = _coda("validate", str(_write(tmp_path / "ok.jsonl", [GOOD])))
    assert ok.returncode == 0 and "1 valid events, 0 invalid" in ok.stdout


def test_replay_publishes_nothing_from_a_file_with_errors_unless_skip_invalid(broker: str, tmp_path: Path) -> None:
    """Without --skip-invalid nothing reaches the broker; with it the valid lines do and the skip is counted."""
    events, state = _bad_file(tmp_path), tmp_path / "state"
    base = ("--state-dir", str(state), "--bootstrap", broker, "--prefix", f"v{os.getpid()}")
    refused = _coda(*base, "replay", "--events", str(events), "--namespace", "a", "--to", "up")
    assert refused.returncode == 1
    assert "line 3: unknown field item_tag" in refused.stderr and "nothing was published" in refused.stderr
    topic = f"v{os.getpid()}-a.up"
    offsets = asyncio.run(end_offsets(Settings(bootstrap=broker), [topic]))
    assert sum(offsets.values()) == 0  # not even the topics exist
    done = _coda(*base, "replay", "--events", str(events), "--namespace", "a", "--to", "up", "--skip-invalid")
    assert done.returncode == 0, done.stderr
    assert "replayed 5 events" in done.stdout and "2 invalid lines skipped" in done.stdout
