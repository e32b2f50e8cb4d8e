"""Per-device model version control: M (current), M0 (backup, never modified), M_buf, lock, rollback.

Files in a device directory:

- `M0` — the initial (global) model. Written once, never modified: often a hard link to the
  fleet's copy of the global model, so 10,000 devices share one file on disk.
- `M` — the current model; absent until the first training kept a step (M0 is then current).
- `M_buf` — the training buffer: a finished training's weights before they are kept.
- `M.lock` — on-disk marker that a training holds the write lock; a restarted process that
  finds it knows the training was interrupted (the old M is intact: only `os.replace` ever
  changes M).
- `*.tmp` — files being written; every write goes temp file → fsync → `os.replace`, so no
  reader ever sees a half-written model file.

A model file is msgpack `{format, version, parent, counter, sha256, weights}`; the checksum
makes a damaged file an error instead of garbage weights, and the version (`<counter>-<hash>`)
travels with the weights it names. Inference reads M, or M0 while M is locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

log = logging.getLogger(__name__)

M, M0, M_BUF, LOCK = "M", "M0", "M_buf", "M.lock"
HISTORY = "versions.jsonl"
FORMAT = 1


class ModelFileError(ValueError):
    """A model file that cannot be read (missing, torn or damaged); names the file."""


class ModelMissing(ModelFileError):
    """The model file does not exist (normal for M before the first kept training)."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    """Weights (`core.models.state_to_bytes`) with the version that names them."""

    version: str
    parent: str
    counter: int
    weights: bytes


def version_id(counter: int, weights: bytes) -> str:
    return f"{counter}-{hashlib.sha256(weights).hexdigest()[:10]}"


def encode_model(model: ModelFile) -> bytes:
    body = {
        "format": FORMAT,
        "version": model.version,
        "parent": model.parent,
        "counter": model.counter,
        "sha256": hashlib.sha256(model.weights).hexdigest(),
        "weights": model.weights,
    }
    return msgpack.packb(body, use_bin_type=True)


def decode_model(raw: bytes, where: str = "") -> ModelFile:
    try:
        body = msgpack.unpackb(raw, raw=False)
        weights = body["weights"]
        ok = body["format"] == FORMAT and hashlib.sha256(weights).hexdigest() == body["sha256"]
        model = ModelFile(str(body["version"]), str(body["parent"]), int(body["counter"]), bytes(weights))
    except Exception as exc:  # truncated msgpack, missing keys, wrong types: all mean "damaged"
        raise ModelFileError(f"{where}: unreadable model file ({type(exc).__name__}: {exc})") from None
    if not ok:
        raise ModelFileError(f"{where}: checksum or format mismatch")
    return model


def read_model(path: Path) -> ModelFile:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelMissing(f"{path}: no such model file") from None
    return decode_model(raw, str(path))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same directory → fsync → os.replace → fsync the directory."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What `ModelStore.recover` found and repaired."""

    interrupted: bool = False  # a lock marker was left: a training died mid-way
    removed: tuple[str, ...] = ()  # stray M_buf / temp files deleted
    bad_current: bool = False  # M was unreadable and was removed: M0 is current again


class ModelStore:
    """One device's model files. Writers hold `lock()`; readers call `current()` at any time.

    The asyncio lock serialises writers inside this process; the marker file tells a
    restarted process (and readers) that M was being rewritten. Blocking file work is small
    (one model is ~70 KB) and is meant to run on the caller's executor thread.
    """

    def __init__(self, directory: Path, name: str = "") -> None:
        self.dir = directory
        self.name = name or directory.name
        self._lock = asyncio.Lock()

    def path(self, which: str) -> Path:
        return self.dir / which

    # ---- creation and recovery
    def ensure_initial(self, initial: ModelFile, shared: Path | None = None) -> bool:
        """Create M0 once (a hard link to `shared` when possible); False if it already existed."""
        target = self.path(M0)
        if target.exists():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        if shared is not None:
            with contextlib.suppress(OSError):  # other file system, no link support: copy instead
                tmp = target.with_name(f"{M0}.{os.getpid()}.link.tmp")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(shared, tmp)
                os.replace(tmp, target)
                self._history("init", initial.version)
                return True
        atomic_write(target, encode_model(initial))
        self._history("init", initial.version)
        return True

    def recover(self) -> Recovery:
        """Startup repair: drop stray buffers and temp files, clear a stale lock, fall back from a bad M."""
        removed = []
        for p in sorted(self.dir.glob("*.tmp")) + [self.path(M_BUF)]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
        interrupted = self.path(LOCK).exists()
        if interrupted:
            self.path(LOCK).unlink()
            log.warning(
                "device %s: a training was interrupted; kept model %s",
                self.name,
                self._version_or_none(M) or "M0",
            )
        bad = False
        if self.path(M).exists():
            try:
                read_model(self.path(M))
            except ModelFileError as exc:
                log.error("device %s: %s; falling back to M0", self.name, exc)
                self.path(M).unlink()
                bad = True
        return Recovery(interrupted, tuple(removed), bad)

    def _history(self, event: str, version: str) -> None:
        """Version ids in order of adoption (best effort: the model files are the truth)."""
        line = json.dumps({"event": event, "version": version, "at": round(time.time(), 3)})
        with contextlib.suppress(OSError), open(self.path(HISTORY), "a") as f:
            f.write(line + "\n")

    def history(self) -> list[dict[str, object]]:
        try:
            lines = self.path(HISTORY).read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a line torn by a crash is skipped
                out.append(json.loads(line))
        return out

    def _version_or_none(self, which: str) -> str | None:
        try:
            return read_model(self.path(which)).version
        except ModelFileError:
            return None

    # ---- reading
    @property
    def locked(self) -> bool:
        return self._lock.locked() or self.path(LOCK).exists()

    def current(self) -> ModelFile:
        """M, or M0 while M is locked or before any training was kept (M absent or damaged)."""
        if not self.locked:
            try:
                return read_model(self.path(M))
            except ModelMissing:
                pass  # normal until a training is kept
            except ModelFileError as exc:
                log.error("device %s: %s; serving M0", self.name, exc)
        return read_model(self.path(M0))

    def initial(self) -> ModelFile:
        return read_model(self.path(M0))

    # ---- writing (under the lock)
    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[Training]:
        """Hold the write lock: marker on disk for the duration, M_buf removed if not kept."""
        async with self._lock:
            marker = self.path(LOCK)
            marker.write_text(json.dumps({"pid": os.getpid(), "since": time.time()}))
            training = Training(self)
            try:
                yield training
            finally:
                if not training.kept:
                    training.rollback()
                marker.unlink(missing_ok=True)


class Training:
    """A write session: base version, buffer, keep or roll back. Methods block (executor thread)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.kept = False
        self.buffer: ModelFile | None = None

    def base(self) -> ModelFile:
        """The model training starts from: the current one (M, else M0), read despite the lock."""
        try:
            return read_model(self.store.path(M))
        except ModelFileError:
            return read_model(self.store.path(M0))

    def write_buffer(self, weights: bytes, parent: ModelFile) -> ModelFile:
        counter = parent.counter + 1
        model = ModelFile(version_id(counter, weights), parent.version, counter, weights)
        atomic_write(self.store.path(M_BUF), encode_model(model))
        self.buffer = model
        return model

    def keep(self) -> ModelFile:
        """Atomically make M_buf the current model."""
        if self.buffer is None:
            raise RuntimeError(f"device {self.store.name}: keep() without write_buffer()")
        store = self.store
        os.replace(store.path(M_BUF), store.path(M))
        _fsync_dir(store.dir)
        self.kept = True
        store._history("keep", self.buffer.version)
        return self.buffer

    def rollback(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.store.path(M_BUF).unlink()
