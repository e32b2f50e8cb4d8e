"""`coda stack up | status | down` as a user runs it: starts, lists every topic, leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ops.stack.broker import alive
from streams.topics import load_topics


def _coda(state: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ops.cli", "--state-dir", str(state), *args],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def test_stack_up_status_down(tmp_path: Path) -> None:
    """up starts Tansu and creates all topics; status lists them; down stops only what up started."""
    state = tmp_path / "state"
    assert "created 12 topic(s)" in _coda(state, "stack", "up")
    pids = json.loads((state / "stack.json").read_text())["pids"]
    assert all(alive(p) for p in pids)
    assert "created 0 topic(s)" in _coda(state, "stack", "up")  # idempotent, same broker
    status = _coda(state, "stack", "status")
    for spec in load_topics():
        line = next(ln for ln in status.splitlines() if ln.startswith(f"coda.{spec.name} "))
        assert int(line.split()[1]) == spec.partitions
    assert "stopped 1 process" in _coda(state, "stack", "down")
    assert not any(alive(p) for p in pids)
    assert not (state / "stack.json").exists()
    assert "nothing running" in _coda(state, "stack", "down")
