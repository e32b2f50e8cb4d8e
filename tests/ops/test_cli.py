"""CLI manners: --version, a --help that loads no torch and shows defaults, JSON logs, `coda clean`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _coda(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)  # type: ignore[call-overload]


def test_version_and_help_import_no_command_module() -> None:
    """`coda --help` parses without importing torch or any command's module; --version prints one."""
    probe = ("import sys\nfrom ops import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'faust', 'aiokafka', 'ops.cli.cmd_fleet') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert _coda("--version").stdout.startswith("coda 0.1")


@pytest.mark.parametrize("command", ["demo", "replay", "validate", "stack", "worker", "fleet", "clean", "config"])
def test_every_help_shows_defaults(command: str) -> None:
    """Options with a default say it in --help."""
    out = _coda(command, "--help").stdout
    assert out.count("(default:") >= 1, out


def test_logs_are_json_lines() -> None:
    """Every log record on stderr is one JSON object with ts, level, logger and msg."""
    from streams.logs import logging_config

    probe = ("import logging, logging.config\nfrom streams.logs import logging_config\n"
             "logging.config.dictConfig(logging_config('INFO'))\n"
             "logging.getLogger('t').warning('a %s with \"quotes\" and\\nnewline', 'msg')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    record = json.loads(done.stderr)
    assert record["level"] == "WARNING" and record["logger"] == "t" and record["msg"].startswith("a msg with")
    assert logging_config("DEBUG")["loggers"]["aiokafka"]["level"] == "DEBUG"


def test_clean_removes_finished_namespaces_only(tmp_path: Path) -> None:
    """A namespace a live process runs in is kept; finished ones are removed."""
    state = tmp_path / "state"
    for name in ("done", "busy"):
        (state / "ns" / name / "logs").mkdir(parents=True)
        (state / "ns" / name / "logs" / "w.log").write_text("x")
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "CODA_STATE_DIR": str(state / "ns" / "busy")})
    try:
        dry = _coda("--state-dir", str(state), "clean", "--dry-run")
        assert "done: would remove" in dry.stdout and (state / "ns" / "done").exists()
        done = _coda("--state-dir", str(state), "clean")
        assert done.returncode == 0, done.stderr
        assert f"busy: in use by pid {busy.pid}, kept" in done.stdout
        assert not (state / "ns" / "done").exists() and (state / "ns" / "busy").exists()
    finally:
        busy.kill()
        busy.wait()
