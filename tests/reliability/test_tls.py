"""`coda stack up --tls`: a client-certificate TLS terminator in front of the embedded broker, on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ops.stack import tls
from ops.stack.broker import alive
from streams import schemas
from streams.app import create_app, topic
from streams.kafka import client_options, consumer, producer
from streams.settings import Settings
from streams.topics import load_topics


def _coda(state: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ops.cli", "--state-dir", str(state), *args],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Settings]]:
    """`coda stack up --tls` in its own state dir; its own broker, stopped by `coda stack down`."""
    state = tmp_path_factory.mktemp("tls-stack")
    printed = _coda(state, "stack", "up", "--tls")
    assert "created 12 topic(s)" in printed and "client certificates required" in printed
    stack = json.loads((state / "stack.json").read_text())
    files = tls.TlsFiles(Path(stack["tls_dir"]))
    assert f"CODA_SSL_CERTFILE={files.client}" in files.env_file.read_text()
    good = tls.client_settings(Settings(state_dir=state / "client", bootstrap=stack["bootstrap"], topic_prefix="coda",
                                        app_id="tls-test", rebalance_timeout_s=3.0), files)
    try:
        yield state, good
    finally:
        assert "stopped 2 process(es)" in _coda(state, "stack", "down")  # the broker and the terminator
        assert not any(alive(p) for p in stack["pids"])


async def _refused(settings: Settings) -> str:
    """Bootstrapping fails; returns the client's error."""
    client = AIOKafkaProducer(**client_options(settings), request_timeout_ms=5000)
    try:
        await asyncio.wait_for(client.start(), 20)
    except (TimeoutError, KafkaError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.stop()
    raise AssertionError(f"{settings.security_protocol} client with cert {settings.ssl_certfile!r} got in")


async def test_clients_without_a_valid_certificate_are_refused(tls_stack: tuple[Path, Settings],
                                                               tmp_path: Path) -> None:
    """Plain text, TLS without a client certificate, and a certificate from another CA never reach the broker."""
    state, good = tls_stack
    rogue_ca, rogue_key = tls.make_ca(tmp_path / "rogue", "someone else's CA")
    rogue_cert, rogue_cert_key = tls.issue(tmp_path / "rogue", "client", rogue_ca, rogue_key)
    attempts = {
        "plaintext": good.replace(security_protocol="PLAINTEXT"),
        "no_certificate": good.replace(ssl_certfile="", ssl_keyfile=""),
        "other_ca": good.replace(ssl_certfile=str(rogue_cert), ssl_keyfile=str(rogue_cert_key)),
    }
    errors = {name: await _refused(s) for name, s in attempts.items()}
    assert all("bootstrap" in e.lower() or "connect" in e.lower() for e in errors.values()), errors
    await asyncio.sleep(0.5)
    log = (state / "tls.log").read_text()
    for reason in ("WRONG_VERSION_NUMBER", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"):
        assert "refused a client at ('127.0.0.1', " in log and reason in log, log[-2000:]


async def test_system_clients_and_a_faust_agent_work_through_tls(tls_stack: tuple[Path, Settings]) -> None:
    """The stack's certificate: aiokafka producer and consumer round-trip, and a Faust agent relays through TLS."""
    _, good = tls_stack
    topics = load_topics(prefix="coda")
    app = create_app(good, topics)
    source, sink = topic(app, topics, "samples"), topic(app, topics, "matches")

    @app.agent(source)
    async def relay(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            record = schemas.decode(event.value, expect=topics["samples"].kinds)
            await sink.send(key=event.key, value=schemas.encode(schemas.MatchResult("u", record.day, [], [])))

    await app.start()
    try:
        p = producer(good)
        await p.start()
        try:
            for day in range(10):
                await p.send(topics.name("samples"), schemas.encode(schemas.DayEnd(day)), key=b"k%d" % day)
            await p.flush()
            brokers = p.client.cluster.brokers()
            assert {b.port for b in brokers} == {int(good.bootstrap.rsplit(":", 1)[1])}  # advertised: the terminator
        finally:
            await p.stop()
        reader = consumer(good, topics.name("matches"), auto_offset_reset="earliest", enable_auto_commit=False)
        await reader.start()
        got: list[int] = []
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while len(got) < 10 and asyncio.get_running_loop().time() < deadline:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    got += [schemas.decode(r.value).day for r in records]  # type: ignore[attr-defined]
        finally:
            await reader.stop()
    finally:
        await app.stop()
    assert sorted(got) == list(range(10))
