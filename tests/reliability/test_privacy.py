"""Privacy: after ingest, no raw user id, raw device id or personal profile value appears anywhere.

The device side of the down-tunnel (a batch for another device, an oversized or garbled batch is
rejected with a reason and stores nothing) is covered where the device is tested:
tests/device/test_runtime.py::test_rejects_a_batch_addressed_to_another_device,
tests/device/test_runtime.py::test_rejects_bad_batches and, through the broker and the
dead-letter topic, tests/device/test_fleet.py::test_fleet_filters_trains_serves_and_dead_letters.
"""

from __future__ import annotations

import zlib

from relhelp import CANARY, Reference

from streams.kafka import admin
from streams.schemas import DownBatch, SchemaError, decode, encode, unpack_samples
from streams.topicio import read_topic

MARK = CANARY.encode()


def _secrets(reference: Reference) -> set[bytes]:
    """Every raw user id, device id and profile value of the replayed events."""
    out: set[bytes] = set()
    for e in reference.events:
        out |= {e["user_id"].encode(), e["device_id"].encode()}
        out |= {v.encode() for v in (e.get("profile") or {}).values()}
    assert out and all(MARK in s for s in out)  # so one marker search finds any of them
    return out


async def test_down_tunnel_payloads_carry_no_raw_ids_or_profile_values(reference: Reference) -> None:
    """Every DownBatch, raw and inflated and unpacked, is free of raw ids and profile values."""
    secrets = _secrets(reference)
    batches = reference.run.down
    assert len(batches) == len({b.batch_id for b in reference.run.batches}) > 0
    for batch in batches:
        inflated = zlib.decompress(batch.payload)
        for blob in (encode(batch), inflated, batch.device.encode(), batch.request_id.encode()):
            assert MARK not in blob, batch.batch_id
        for sample in unpack_samples(batch.payload):
            fields = (sample.sample_id, sample.user, *map(str, sample.profile), *map(str, sample.seq))
            assert not any(s.decode() in f for f in fields for s in secrets)
            assert sample.user == ""  # owners never travel to devices
    assert not any(b.device.startswith(CANARY) for b in batches)


async def test_nothing_after_ingest_carries_raw_ids_or_profile_values(reference: Reference) -> None:
    """Every record (key and value) of every topic but the raw up-tunnel, changelogs included, and the logs."""
    settings, topics = reference.settings, reference.topics
    client = await admin(settings)
    try:
        names = sorted(n for n in await client.list_topics()
                       if n.startswith((f"{topics.prefix}.", f"{settings.app_id}-")))
    finally:
        await client.close()
    raw_by_design = {topics.name("up")}  # the device's own envelopes, keyed by its raw id
    scanned = {n for n in names if n not in raw_by_design}
    assert {topics.name("samples"), topics.name("down"), topics.name("user-vectors"),
            f"{settings.app_id}-users-changelog", f"{settings.app_id}-ingest-history-changelog"} <= scanned
    records = 0
    for name in sorted(scanned):
        for m in await read_topic(settings, name):
            records += 1
            assert MARK not in (m.key or b""), f"{name}[{m.partition}]@{m.offset}"
            if m.value is None:  # a changelog tombstone: a deleted key, nothing else
                continue
            assert MARK not in m.value, f"{name}[{m.partition}]@{m.offset}"
            try:
                record = decode(m.value, 1 << 30)
            except SchemaError:
                continue
            if isinstance(record, DownBatch):
                assert MARK not in zlib.decompress(record.payload), f"{name}[{m.partition}]@{m.offset}"
    assert records > 100
    for log in (settings.state_dir / "logs").glob("*.log"):
        assert MARK not in log.read_bytes(), log.name
