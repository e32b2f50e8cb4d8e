"""Tests for device.modelstore: atomic model files, lock and rollback, recovery after a SIGKILL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from crash_worker import DEVICE_ID, LIMITS, crash_settings

from core.privacy import device_pseudonym
from device.device import device_dir
from device.modelstore import (
    LOCK,
    M0,
    M_BUF,
    M,
    ModelFile,
    ModelFileError,
    ModelMissing,
    ModelStore,
    decode_model,
    encode_model,
    read_model,
    version_id,
)
from device.storage import DatabasePool, open_store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def model(counter: int, size: int = 1024, parent: str = "") -> ModelFile:
    weights = os.urandom(size)
    return ModelFile(version_id(counter, weights), parent, counter, weights)


def test_model_file_round_trip_and_damage() -> None:
    """A model file decodes to itself; a truncated or flipped one is a ModelFileError."""
    m = model(3)
    raw = encode_model(m)
    assert decode_model(raw) == m and m.version.startswith("3-")
    with pytest.raises(ModelFileError):
        decode_model(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF
    with pytest.raises(ModelFileError):
        decode_model(bytes(flipped))


async def test_keep_and_rollback(tmp_path: Path) -> None:
    """Keep replaces M through M_buf; a failure inside the lock rolls back and leaves M as it was."""
    store = ModelStore(tmp_path)
    m0 = model(0)
    assert store.ensure_initial(m0) and not store.ensure_initial(model(0))
    assert store.current() == m0  # no M yet: M0 is current
    async with store.lock() as training:
        new = training.write_buffer(os.urandom(512), training.base())
        training.keep()
    assert store.current() == new and new.parent == m0.version and new.counter == 1
    with pytest.raises(RuntimeError):
        async with store.lock() as training:
            training.write_buffer(os.urandom(512), training.base())
            raise RuntimeError("training crashed")
    assert store.current() == new
    assert not (tmp_path / M_BUF).exists() and not (tmp_path / LOCK).exists()
    assert [h["version"] for h in store.history()] == [m0.version, new.version]
    assert read_model(tmp_path / M0) == m0  # never modified


async def test_inference_reads_m0_while_locked_and_never_a_torn_file(tmp_path: Path) -> None:
    """Reader threads hammer M during 20 trainings of 2 MB models: every read is whole; locked → M0."""
    store = ModelStore(tmp_path)
    m0 = model(0, 1 << 21)
    store.ensure_initial(m0)
    stop = threading.Event()
    errors: list[Exception] = []
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(store.current().version)
                read_model(tmp_path / M)  # bypass the lock logic: the file itself is never torn
            except ModelMissing:
                pass  # before the first keep
            except ModelFileError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            async with store.lock() as training:
                assert store.locked and store.current() == m0
                base = training.base()
                await asyncio.to_thread(training.write_buffer, os.urandom(1 << 21), base)
                await asyncio.to_thread(training.keep)
            await asyncio.sleep(0.01)  # unlocked: readers get M
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert len(seen) > 2  # readers saw M0 and several trained versions


def test_recover_cleans_strays_and_falls_back_from_a_bad_m(tmp_path: Path) -> None:
    """Stray M_buf, temp files and a lock marker are removed; an unreadable M falls back to M0."""
    store = ModelStore(tmp_path)
    m0 = model(0)
    store.ensure_initial(m0)
    (tmp_path / M_BUF).write_bytes(b"half a model")
    (tmp_path / "M.123.tmp").write_bytes(b"junk")
    (tmp_path / LOCK).write_text("{}")
    (tmp_path / M).write_bytes(encode_model(model(1))[:100])
    report = store.recover()
    assert report.interrupted and report.bad_current
    assert set(report.removed) == {M_BUF, "M.123.tmp"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "versions.jsonl") == [M0]
    assert store.current() == m0


def test_initial_model_is_a_hard_link_to_the_shared_file(tmp_path: Path) -> None:
    """Devices share the global model's file: M0 is a hard link, not a copy."""
    shared = tmp_path / "global.model"
    m0 = model(0)
    shared.write_bytes(encode_model(m0))
    store = ModelStore(tmp_path / "dev")
    store.ensure_initial(m0, shared)
    assert (tmp_path / "dev" / M0).stat().st_ino == shared.stat().st_ino
    assert store.current() == m0


def _kill_worker(state_dir: Path, mode: str, delay_s: float, during: Path | None = None) -> None:
    """Start the worker, SIGKILL it `delay_s` after it is ready (or once `during` exists, if given)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_worker.py"), str(state_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
        if during is not None:
            deadline = time.monotonic() + 20
            while not during.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.001)
            assert during.exists(), "the worker never took the lock"
        try:
            proc.wait(timeout=delay_s)
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() is None, f"worker died on its own: {proc.stderr.read()}"  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


async def _check_after_crash(directory: Path) -> None:
    store = ModelStore(directory)
    store.recover()
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name in (M_BUF, LOCK)]
    assert not leftovers
    current = store.current()  # M or M0, readable either way
    if (directory / M).exists():
        assert read_model(directory / M) == current
    pool = DatabasePool(1)
    async with open_store(pool, directory, LIMITS) as db:
        assert await db.integrity() == "ok"
        assert await db.count_local() <= LIMITS.local
        assert await db.count_outside() <= LIMITS.outside
    await pool.close_all()


@pytest.mark.parametrize("delay_s", [0.05, 0.3, 0.7])
async def test_sigkill_during_model_and_db_writes(tmp_path: Path, delay_s: float) -> None:
    """SIGKILL at a random point of 1 MB model writes and DB flushes: M or M0 intact, DB consistent."""
    _kill_worker(tmp_path, "files", delay_s + random.uniform(0, 0.05))
    await _check_after_crash(tmp_path / "files")


@pytest.mark.parametrize("during_training", [True, False])
async def test_sigkill_during_device_rounds(tmp_path: Path, during_training: bool) -> None:
    """A real device killed mid-training (or anywhere in its rounds) restarts with M or M0 and a sound DB."""
    settings = crash_settings(tmp_path)
    directory = device_dir(settings.state_dir, device_pseudonym(settings.pseudonym_key, DEVICE_ID))
    if during_training:
        _kill_worker(tmp_path, "device", 0.0, during=directory / LOCK)
    else:
        _kill_worker(tmp_path, "device", random.uniform(0.2, 0.8))
    await _check_after_crash(directory)
