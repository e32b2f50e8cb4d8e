"""Safe defaults: the pseudonym key, a stack that signals only its own processes, a clear status line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.stack import broker as stack
from ops.stack.keys import KEY_FILE, is_local, resolve_pseudonym_key
from streams.kafka import stack_file
from streams.settings import DEV_PSEUDONYM_KEY, Settings, SettingsError


def test_default_key_is_refused_against_an_external_bootstrap() -> None:
    """The public development key and a remote cluster: a clear error, unless explicitly allowed."""
    remote = Settings(bootstrap="kafka-1.example:9093,kafka-2.example:9093")
    with pytest.raises(SettingsError, match="CODA_PSEUDONYM_KEY is the public development key.*CODA_ALLOW_DEV_KEY"):
        resolve_pseudonym_key(remote)
    assert resolve_pseudonym_key(remote.replace(allow_dev_key=True)).pseudonym_key == DEV_PSEUDONYM_KEY
    assert resolve_pseudonym_key(remote.replace(pseudonym_key="s3cret")).pseudonym_key == "s3cret"
    assert is_local("127.0.0.1:9092,localhost:9093,[::1]:9094") and not is_local("10.0.0.5:9092")


def test_cli_refuses_the_default_key_against_an_external_bootstrap() -> None:
    """`coda worker` pointed at a cluster with the default key stops before connecting."""
    done = subprocess.run([sys.executable, "-m", "ops.cli", "--bootstrap", "kafka.example:9093", "worker",
                           "--id", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "public development key" in done.stderr


def test_local_stack_gets_a_random_private_key_per_state_dir(tmp_path: Path) -> None:
    """The embedded stack swaps the default for a random key stored with mode 0600, stable per directory."""
    a = resolve_pseudonym_key(Settings(state_dir=tmp_path / "a"))
    again = resolve_pseudonym_key(Settings(state_dir=tmp_path / "a"))
    b = resolve_pseudonym_key(Settings(state_dir=tmp_path / "b"))
    assert a.pseudonym_key == again.pseudonym_key != b.pseudonym_key
    assert a.pseudonym_key != DEV_PSEUDONYM_KEY and len(a.pseudonym_key) == 64
    assert (tmp_path / "a" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    reproducible = resolve_pseudonym_key(Settings(state_dir=tmp_path / "c"), reproducible=True)
    assert reproducible.pseudonym_key == DEV_PSEUDONYM_KEY  # experiments: the same arm split everywhere


def _identity_once_started(pid: int, timeout_s: float = 10.0) -> list[object]:
    """The child's identity once it runs its program: between fork and exec its command line reads
    empty (seen under load), and an identity taken then never matches again (`start_broker` waits too)."""
    deadline = time.monotonic() + timeout_s
    while (ident := stack.identity(pid)) is None or not ident[1]:
        assert time.monotonic() < deadline, f"pid {pid} did not start its program in {timeout_s} s"
        time.sleep(0.01)
    return ident


def test_a_stale_pid_is_never_signalled(tmp_path: Path) -> None:
    """A recorded pid now running another program (or started at another time) survives `stack down`."""
    settings = Settings(state_dir=tmp_path)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded = _identity_once_started(stranger.pid)
        cases = {
            "other command": [recorded[0], ["tansu", "broker"]],
            "other start time": [float(recorded[0]) - 3600, recorded[1]],  # type: ignore[arg-type]
        }
        for why, ident in cases.items():
            state = stack.StackState("127.0.0.1:1", [stranger.pid], 0.0, "", identities={str(stranger.pid): ident})
            state.save(stack_file(settings))
            assert stack.down(settings) == [], why
            assert stranger.poll() is None, why
        legacy = stack.StackState("127.0.0.1:1", [stranger.pid], 0.0, "")  # no identity recorded
        legacy.save(stack_file(settings))
        assert stack.down(settings) == [] and stranger.poll() is None
        ours = dataclasses.replace(legacy, identities={str(stranger.pid): recorded})
        ours.save(stack_file(settings))
        assert stack.down(settings) == [stranger.pid]
        assert stranger.wait(10) != 0
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait()


def test_status_of_a_dead_stack_is_one_clear_line(tmp_path: Path) -> None:
    """`coda stack status` with no broker prints one line and exits 1."""
    settings = Settings(state_dir=tmp_path)
    assert "no local stack" in (stack.broker_problem(settings) or "")
    stack.StackState("127.0.0.1:1", [2**22 + 7], 0.0, "", identities={str(2**22 + 7): [0.0, ["x"]]}).save(
        stack_file(settings))
    done = subprocess.run([sys.executable, "-m", "ops.cli", "--state-dir", str(tmp_path), "stack", "status"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        (f"the local stack recorded in {stack_file(settings)} is not running (pid {2**22 + 7} gone or replaced); "
         "`coda stack up` starts a new one")]
    assert done.stderr == ""
