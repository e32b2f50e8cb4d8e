"""A device's SQLite database (aiosqlite, WAL): sample tables under lifecycle rules, and a bounded pool.

One database per device. `local_samples` and `outside_samples` hold samples as msgpack blobs
next to the indexed columns the rules need (sample_id, ts, score, role); `evaluations` keeps
progressive-validation scores, `batches` the down-tunnel batch ids already taken (idempotence),
`state` the device's small key/value state. Writes are buffered (`add_*`, `set_state`) and
`flush()` applies them in one transaction, with the forced cleanup of `core.lifecycle` inside
that same transaction: no committed state ever holds more rows than a table's limit.

aiosqlite runs one thread per open connection, so `DatabasePool` keeps at most `max_open`
connections and closes the least recently used idle one when it needs another.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack

from core import lifecycle
from core.lifecycle import FilterOutcome, LocalSplit, OutsideRole, Row
from core.sample import Sample

log = logging.getLogger(__name__)

DB_FILE = "device.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS local_samples (
    sample_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, label INTEGER NOT NULL, blob BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS local_ts ON local_samples(ts);
CREATE TABLE IF NOT EXISTS outside_samples (
    sample_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, score REAL, role TEXT NOT NULL,
    request_id TEXT NOT NULL, blob BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outside_role_score ON outside_samples(role, score);
CREATE TABLE IF NOT EXISTS evaluations (
    sample_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, label INTEGER NOT NULL, score REAL NOT NULL,
    model_version TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, day INTEGER NOT NULL, n INTEGER NOT NULL,
    bytes INTEGER NOT NULL, status TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""
SCHEMA_VERSION = 1  # PRAGMA user_version once the schema is in place: reopening skips the DDL
CACHE_KIB = 256  # a device database is ~100 KB: SQLite's default 2 MB page cache × the pool is waste


@dataclass(frozen=True, slots=True)
class Limits:
    """Rows a device keeps at most (paper: 200 local, 200 outside)."""

    local: int = 200
    outside: int = 200


# --------------------------------------------------------------------------- blobs
def sample_to_blob(s: Sample) -> bytes:
    return msgpack.packb([s.sample_id, s.user, s.ts, s.item, s.tags, s.seq, s.seq_tags, s.profile, s.label])


def sample_from_blob(blob: bytes) -> Sample:
    # use_list=False gives tuples all the way down: exactly Sample's field types
    return Sample(*msgpack.unpackb(blob, use_list=False))


# --------------------------------------------------------------------------- pool
@dataclass
class _Entry:
    ready: asyncio.Future[aiosqlite.Connection]
    users: int = 0
    opener: asyncio.Task[None] | None = None  # keeps the opening task referenced


@dataclass
class PoolStats:
    opened: int = 0
    closed: int = 0
    waits: int = 0


class DatabasePool:
    """At most `max_open` open connections; an idle least-recently-used one is closed for a new one."""

    def __init__(self, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be ≥ 1, got {max_open}")
        self.max_open = max_open
        self._entries: OrderedDict[Path, _Entry] = OrderedDict()
        self._cond = asyncio.Condition()
        self.stats = PoolStats()

    @property
    def open_now(self) -> int:
        return len(self._entries)

    @asynccontextmanager
    async def connection(self, path: Path) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._acquire(path)
        try:
            yield conn
        finally:
            await self._release(path)

    async def _acquire(self, path: Path) -> aiosqlite.Connection:
        async with self._cond:
            while True:
                entry = self._entries.get(path)
                if entry is not None:
                    entry.users += 1
                    self._entries.move_to_end(path)
                    break
                if len(self._entries) < self.max_open:
                    entry = _Entry(asyncio.get_running_loop().create_future(), users=1)
                    self._entries[path] = entry
                    entry.opener = asyncio.create_task(self._open(path, entry))
                    break
                if not await self._close_idle():
                    self.stats.waits += 1
                    await self._cond.wait()
        try:
            return await asyncio.shield(entry.ready)
        except BaseException:
            await self._release(path)
            raise

    async def _open(self, path: Path, entry: _Entry) -> None:
        try:
            conn = await open_database(path)
        except BaseException as exc:  # hand the failure to every waiter, forget the entry
            async with self._cond:
                self._entries.pop(path, None)
                self._cond.notify_all()
            entry.ready.set_exception(exc)
            entry.ready.exception()  # mark retrieved: the waiters re-raise it
            return
        self.stats.opened += 1
        entry.ready.set_result(conn)

    async def _close_idle(self) -> bool:
        """Close the least recently used idle connection (called with the lock held)."""
        for path, entry in self._entries.items():
            if entry.users == 0 and entry.ready.done():
                del self._entries[path]
                await entry.ready.result().close()
                self.stats.closed += 1
                return True
        return False

    async def _release(self, path: Path) -> None:
        async with self._cond:
            entry = self._entries.get(path)
            if entry is not None:
                entry.users -= 1
            self._cond.notify_all()

    async def close_all(self) -> None:
        async with self._cond:
            entries = list(self._entries.values())
            self._entries.clear()
            for entry in entries:
                if entry.ready.done() and not entry.ready.cancelled() and not entry.ready.exception():
                    await entry.ready.result().close()
                    self.stats.closed += 1
            self._cond.notify_all()


async def open_database(path: Path) -> aiosqlite.Connection:
    """Open (creating if needed) a device database in WAL mode with the schema in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)  # we BEGIN/COMMIT ourselves
    try:
        # one trip to the connection's thread for all settings (each trip costs a thread handoff);
        # NORMAL in WAL: a killed process loses nothing committed; only power loss may drop the tail
        await conn.executescript(
            f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; "
            f"PRAGMA cache_size=-{CACHE_KIB};"
        )
        row = next(iter(await conn.execute_fetchall("PRAGMA user_version")), None)
        if not row or row[0] != SCHEMA_VERSION:
            await conn.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    except BaseException:
        await conn.close()
        raise
    return conn


# --------------------------------------------------------------------------- device store
@dataclass
class FlushResult:
    """What one `flush()` changed; `dropped_*` are forced-cleanup deletions."""

    local_added: int = 0
    outside_added: int = 0
    dropped_local: int = 0
    dropped_outside: int = 0
    evaluations: int = 0


@dataclass
class _Pending:
    local: dict[str, Sample] = field(default_factory=dict)
    outside: dict[str, tuple[Sample, str]] = field(default_factory=dict)
    evaluations: list[tuple[str, int, int, float, str]] = field(default_factory=list)
    batches: list[tuple[str, str, int, int, int, str]] = field(default_factory=list)
    state: dict[str, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.local or self.outside or self.evaluations or self.batches or self.state)


class DeviceStore:
    """One device's tables over a leased connection: buffered writes, lifecycle-aware reads."""

    def __init__(self, conn: aiosqlite.Connection, limits: Limits, name: str = "") -> None:
        self.conn = conn
        self.limits = limits
        self.name = name
        self._pending = _Pending()

    # ---- buffered writes
    def add_local(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self._pending.local[s.sample_id] = s

    def add_outside(self, samples: Iterable[Sample], request_id: str) -> None:
        for s in samples:
            self._pending.outside[s.sample_id] = (s, request_id)

    def add_evaluation(self, sample_id: str, ts: int, label: int, score: float, model_version: str) -> None:
        self._pending.evaluations.append((sample_id, ts, label, float(score), model_version))

    def add_batch(self, batch_id: str, request_id: str, day: int, n: int, size: int, status: str) -> None:
        self._pending.batches.append((batch_id, request_id, day, n, size, status))

    def set_state(self, key: str, value: Any) -> None:
        self._pending.state[key] = msgpack.packb(value)

    async def flush(self) -> FlushResult:
        """Write everything buffered in one transaction, enforcing the table limits inside it."""
        result = FlushResult()
        if not self._pending:
            return result
        pending, self._pending = self._pending, _Pending()
        async with self.transaction():
            if pending.local:
                result.local_added, result.dropped_local = await self._insert_local(pending.local)
            if pending.outside:
                result.outside_added, result.dropped_outside = await self._insert_outside(pending.outside)
            if pending.evaluations:
                await self.conn.executemany(
                    "INSERT OR IGNORE INTO evaluations VALUES (?, ?, ?, ?, ?)", pending.evaluations
                )
                result.evaluations = len(pending.evaluations)
            if pending.batches:
                await self.conn.executemany(
                    "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?)", pending.batches
                )
            if pending.state:
                await self.conn.executemany(
                    "INSERT OR REPLACE INTO state VALUES (?, ?)", list(pending.state.items())
                )
        if result.dropped_local or result.dropped_outside:
            log.info(
                "device %s: forced cleanup dropped %d local, %d outside samples",
                self.name,
                result.dropped_local,
                result.dropped_outside,
            )
        return result

    def discard(self) -> None:
        """Forget buffered writes (after a failure, so nothing half-decided gets written later)."""
        self._pending = _Pending()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """All rows in one trip to the connection's thread (a cursor would take three)."""
        return list(await self.conn.execute_fetchall(sql, args))

    async def _first(self, sql: str, *args: Any) -> Any:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    async def _rows(self, sql: str) -> list[Row]:
        return [Row(sid, ts, score) for sid, ts, score in await self._fetch(sql)]

    async def _insert_local(self, new: dict[str, Sample]) -> tuple[int, int]:
        existing = await self._rows("SELECT sample_id, ts, NULL FROM local_samples")
        known = {r.sample_id for r in existing}
        fresh = [s for sid, s in new.items() if sid not in known]
        drop = lifecycle.plan_insert(
            existing, [Row(s.sample_id, s.ts) for s in fresh], self.limits.local, lifecycle.cleanup_local
        )
        rows = [(s.sample_id, s.ts, s.label, sample_to_blob(s)) for s in fresh]
        return await self._apply_insert("local_samples", rows, drop)

    async def _insert_outside(self, new: dict[str, tuple[Sample, str]]) -> tuple[int, int]:
        existing = await self._rows("SELECT sample_id, ts, score FROM outside_samples")
        known = {r.sample_id for r in existing}
        fresh = [(s, req) for sid, (s, req) in new.items() if sid not in known]
        drop = lifecycle.plan_insert(
            existing,
            [Row(s.sample_id, s.ts) for s, _ in fresh],
            self.limits.outside,
            lifecycle.cleanup_outside,
        )
        role = OutsideRole.NEW.value
        rows = [(s.sample_id, s.ts, None, role, req, sample_to_blob(s)) for s, req in fresh]
        return await self._apply_insert("outside_samples", rows, drop)

    async def _apply_insert(
        self, table: str, rows: list[tuple[Any, ...]], drop: list[str]
    ) -> tuple[int, int]:
        """Delete `drop` (existing rows; dropped new ones are just not inserted), insert the rest."""
        gone = set(drop)
        rows = [r for r in rows if r[0] not in gone]
        await self._delete(table, drop)
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            await self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        return len(rows), len(drop)

    async def _delete(self, table: str, ids: Sequence[str]) -> None:
        if ids:
            await self.conn.executemany(f"DELETE FROM {table} WHERE sample_id = ?", [(i,) for i in ids])

    # ---- lifecycle
    async def local_split(self, now_ts: int, t_days: int, t2_days: int) -> LocalSplit[Sample]:
        """Local samples by use at `now_ts`, oldest first (expired ones are listed, not deleted)."""
        rows = await self._fetch("SELECT blob FROM local_samples ORDER BY ts, sample_id")
        samples = [sample_from_blob(b) for (b,) in rows]
        return lifecycle.split_local(samples, now_ts, t_days, t2_days)

    async def expire_local(self, now_ts: int, t2_days: int) -> int:
        """Delete local samples older than t' days; returns how many went."""
        keep_from = lifecycle.cutoffs(now_ts, 0, t2_days).keep_from
        async with self.transaction():
            cur = await self.conn.execute("DELETE FROM local_samples WHERE ts < ?", (keep_from,))
            return cur.rowcount

    async def outside(self, role: OutsideRole) -> list[Sample]:
        sql = "SELECT blob FROM outside_samples WHERE role = ? ORDER BY ts, sample_id"
        return [sample_from_blob(b) for (b,) in await self._fetch(sql, role.value)]

    async def count_outside(self, role: OutsideRole | None = None) -> int:
        if role is None:
            return await self._scalar("SELECT COUNT(*) FROM outside_samples")
        return await self._scalar("SELECT COUNT(*) FROM outside_samples WHERE role = ?", role.value)

    async def outside_counts(self) -> Counter[OutsideRole]:
        """Rows per role, in one query."""
        counts: Counter[OutsideRole] = Counter()
        for role, n in await self._fetch("SELECT role, COUNT(*) FROM outside_samples GROUP BY role"):
            counts[OutsideRole(role)] = int(n)
        return counts

    async def count_local(self) -> int:
        return await self._scalar("SELECT COUNT(*) FROM local_samples")

    async def apply_filter(self, outcome: FilterOutcome) -> None:
        """Algorithm 2's aftermath: negatives and low scorers deleted, the rest kept with a score."""
        async with self.transaction():
            await self._delete("outside_samples", outcome.delete)
            if outcome.keep:
                await self.conn.executemany(
                    "UPDATE outside_samples SET score = ?, role = ? WHERE sample_id = ?",
                    [(score, OutsideRole.KEPT.value, sid) for sid, score in outcome.keep.items()],
                )

    async def delete_outside(self, ids: Sequence[str]) -> None:
        async with self.transaction():
            await self._delete("outside_samples", ids)

    # ---- batches, state, evaluations
    async def batch_status(self, batch_id: str) -> str | None:
        row = await self._first("SELECT status FROM batches WHERE batch_id = ?", batch_id)
        return None if row is None else str(row[0])

    async def forget_batches(self, before_day: int) -> int:
        """Batch ids of days no redelivery can reach any more."""
        async with self.transaction():
            cur = await self.conn.execute("DELETE FROM batches WHERE day < ?", (before_day,))
            return cur.rowcount

    async def get_state(self, key: str, default: Any = None) -> Any:
        if key in self._pending.state:
            return msgpack.unpackb(self._pending.state[key])
        row = await self._first("SELECT value FROM state WHERE key = ?", key)
        return default if row is None else msgpack.unpackb(row[0])

    async def evaluations(self) -> list[tuple[str, int, int, float, str]]:
        """(sample_id, ts, label, score, model_version) in event-time order."""
        return [tuple(r) for r in await self._fetch("SELECT * FROM evaluations ORDER BY ts, sample_id")]

    async def integrity(self) -> str:
        row = await self._first("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    async def _scalar(self, sql: str, *args: Any) -> int:
        row = await self._first(sql, *args)
        return int(row[0]) if row else 0


@asynccontextmanager
async def open_store(
    pool: DatabasePool, directory: Path, limits: Limits, name: str = ""
) -> AsyncIterator[DeviceStore]:
    """Lease the device's connection from `pool` for the duration of one piece of work."""
    async with pool.connection(directory / DB_FILE) as conn:
        store = DeviceStore(conn, limits, name)
        try:
            yield store
        except BaseException:
            store.discard()  # half-decided work must not be written
            raise
        await store.flush()  # a caller that forgot to flush loses nothing
