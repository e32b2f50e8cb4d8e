"""`coda bench fleet`: a daily device cycle for N devices — our fleet vs a plain loop (ceiling) vs Flower.

Every way runs the same per-device job through the same `Device` code (`_device_day`): one
day's events reported (progressive validation, local samples), then `BATCHES` matched
batches → Algorithm 2 → Algorithm 3, then the day's notice. Each way reports devices/s, CPU
seconds per device (steadier than wall time on a shared machine) and memory.

- fleet: `coda fleet` processes fed through the real broker; this process plays the cloud
  (answers pull requests with the batches). Timed from the first action sent to the last
  message the fleet processed.
- plain loop: `_device_day` called device after device in this process: no broker, no
  fleet — the hardware ceiling of one core.
- plain loop in the fleet's order: the same handlers called directly in the order and with
  the concurrency a fleet gets the work (every device's actions, then every device's batches):
  the fleet against it is the broker's hops and the fleet's dispatch alone.
- Flower: its simulation engine (`flwr[simulation]`, Ray backend) with N virtual clients
  (supernodes), each client running `_device_day` for its own device, in a child process
  (Ray's processes and Flower's telemetry setting stay out of this one).

The plain loops are timed on a fixed sample of the N devices when N is large: their cost is
per device, so a sample measures it (in the fleet's order the sample still outnumbers the
database pool, as N does). Flower is timed on a full N-client round, as
the fleet runs all N: its cost per client grows with the messages in flight (its in-memory
link state scans every stored message for every node on each delivery pass), so a round of a
few clients among N would flatter it. The round is timed to completion, as the fleet's cycle
is, up to a cap of `FLOWER_CAP_S` (10 minutes): a round still running then is reported as
`unfinished: n of N done`, its rate over the clients that finished (a lower bound on what
the whole round would take, since Flower's driver slows as a round goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from core.sample import DAY
from ops.bench.common import Usage, broker_for, table, write_report
from streams.settings import Settings

BATCHES = 3  # matched batches of 25 per device and day in this job (the quota allows 12)
BATCH_SAMPLES = 25
SIZES, QUICK_SIZES, LARGE_SIZE = (1000, 5000), (100,), 10_000
PLAIN_SAMPLE = 300  # devices the plain loop runs per size (all of them below this)
FLOWER_CAP_S, QUICK_FLOWER_CAP_S = 600.0, 120.0  # a full round still running then is reported unfinished
FLOWER_START_TIMEOUT_S = 600  # Ray start-up, N supernodes, warming the actors
DevicesJob = list[tuple[str, list[Any]]]


def say(msg: str) -> None:
    print(f"[bench fleet] {msg}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool, settings: Settings, fleets: tuple[int, ...] = (1,),
        large: bool = False, large_only: bool = False) -> dict[str, Any]:
    """Each size four ways; `large` adds a daily cycle of `LARGE_SIZE` devices, `large_only` runs that
    cycle alone; the fleet ways and the cycle run `fleets[0]` fleet processes in one consumer group."""
    sizes = () if large_only else QUICK_SIZES if quick else SIZES
    large = large or large_only
    flower_cap = QUICK_FLOWER_CAP_S if quick else FLOWER_CAP_S
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coda-bench-fleet-") as scratch, \
            broker_for(settings, Path(scratch)) as s:
        runs = [asyncio.run(_one(s, Path(scratch) / f"n{n}", n, fleets, flower_cap)) for n in sizes]
        cycle = asyncio.run(_large_cycle(s, Path(scratch) / "large", fleets[0])) if large else None
    result = {"runs": runs, "batches_per_device": BATCHES, "suite_seconds": time.monotonic() - started,
              "plain_loop_sample": PLAIN_SAMPLE, "flower_cap_s": flower_cap,
              "targets": {"fleet_over_flower": 10.0, "fleet_over_plain_loop": 0.8, "fleet_cpu_over_plain_loop": 1.1,
                          "large_devices": LARGE_SIZE, "large_cycle_seconds": 600}}
    if cycle is not None:
        result["large_cycle"] = cycle
    write_report(out, "fleet", result, _markdown(runs, cycle, flower_cap))
    return result


def _markdown(runs: list[dict[str, Any]], cycle: dict[str, Any] | None, flower_cap: float) -> str:
    return (_sizes_markdown(runs, flower_cap) if runs else "# bench fleet\n") + _cycle_markdown(cycle)


def _cycle_markdown(cycle: dict[str, Any] | None) -> str:
    if cycle is None:
        return ""
    where = "one fleet process" if cycle["processes"] == 1 else f"{cycle['processes']} fleet processes"
    return (f"\nDaily cycle of {cycle['devices']:,} devices in {where}: {cycle['seconds']:.0f} s "
            f"({cycle['devices_per_s']:.1f} devices/s, {cycle['cpu_s_per_device']:.3f} CPU s a device), "
            f"peak RSS {cycle['rss_mb_peak']:.0f} MB.\n")


def _sizes_markdown(runs: list[dict[str, Any]], flower_cap: float) -> str:
    rows = []
    for r in runs:
        for name, m in r["ways"].items():
            rows.append([r["devices"], name, m.get("devices_timed", ""), m.get("devices_per_s", m.get("skipped", "")),
                         m.get("cpu_s_per_device", ""), m.get("main_thread_cpu_s_per_device", ""),
                         m.get("databases_opened_per_device", ""), m.get("mb_per_device", ""), m.get("seconds", ""),
                         m.get("round", "")])
    md = ("# bench fleet\n\nThe same per-device daily job (20 events reported, then "
          f"{BATCHES} matched batches of {BATCH_SAMPLES} → Algorithm 2 → Algorithm 3) for N devices, four ways "
          "in one run: our fleet process through the real broker; a plain single-process loop over the same "
          "Device code (the hardware ceiling), also in the fleet's order (every device's actions, then every "
          "device's batches, as many devices at once as the fleet); Flower's simulation engine (Ray backend, N supernodes) when "
          f"`flwr[simulation]` is installed. The plain loops run the first {PLAIN_SAMPLE} devices; Flower "
          f"one round of all N clients, timed to completion or stopped at {flower_cap:.0f} s "
          "(`timed`: devices finished).\n\n")
    md += table(["devices", "way", "timed", "devices/s", "CPU s/device", "of it, main thread",
                 "databases opened/device", "MB per device", "seconds", "round"], rows) + "\n\n"
    ratios = [[r["devices"], r["fleet_over_plain_loop"], r["fleet_cpu_over_plain_loop"],
               r["fleet_cpu_over_fleet_order_loop"], r["fleet_over_flower"] or "—"] for r in runs]
    md += table(["devices", "fleet / plain loop (devices/s)", "fleet / plain loop (CPU s a device)",
                 "fleet / plain loop in the fleet's order (CPU s a device)", "fleet / Flower (devices/s)"],
                ratios) + "\n"
    return md


# --------------------------------------------------------------------------- the job
def _job(settings: Settings, n: int) -> tuple[DevicesJob, list[bytes]]:
    """Per device: one day's events; the matched payloads every device receives."""
    from core.features import History, event_to_sample
    from ops.datasets import load_dataset
    from ops.replay.publish import plan_days
    from streams.schemas import pack_samples

    data = load_dataset("synthetic", n_users=n + 10, days=1, events_per_user=20, seed=7)
    plan = plan_days(data.events)[0]
    devices = [(d, list(e)) for d, e in plan.by_device[:n]]
    matched, history = [], History()
    for d, events in plan.by_device[n:]:
        for e in events:
            fields = {"ts": e.ts - 1, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action, "label": e.label}
            sample, history = event_to_sample(d, fields, history, settings.features)
            matched.append(sample)
    size = BATCH_SAMPLES
    return devices, [pack_samples(matched[size * b: size * b + size]) for b in range(BATCHES)]


async def _device_day(runtime: Any, device_id: str, events: list[Any], payloads: list[bytes]) -> None:
    """One device's daily job through the `Device` handlers, as the fleet runs them."""
    device = await _report_day(runtime, device_id, events)
    await _take_batches(device, events, payloads)


async def _report_day(runtime: Any, device_id: str, events: list[Any]) -> Any:
    """The day's events reported: local samples, the envelope, the pull request."""
    from core.privacy import device_pseudonym
    from device.device import Device
    from streams.schemas import DeviceActions

    device = Device(runtime, device_pseudonym(runtime.settings.pseudonym_key, device_id), device_id)
    await device.on_actions(DeviceActions(device_id, events, events[0].ts // DAY))
    return device


async def _take_batches(device: Any, events: list[Any], payloads: list[bytes]) -> None:
    """The cloud's answer to the day's pull: the matched batches, then the quota notice."""
    from streams.schemas import DownBatch, DownNotice

    day = events[0].ts // DAY
    request = (await device.state()).request or f"plain-{device.device_id}"
    for b, payload in enumerate(payloads):
        await device.on_batch(DownBatch(device.pseudonym, f"{request}-{b}", request, day, BATCH_SAMPLES, payload,
                                        of=len(payloads)))
    await device.on_notice(DownNotice(device.pseudonym, request, day, "quota", len(payloads)))


async def _one(base: Settings, scratch: Path, n: int, fleets: tuple[int, ...], flower_cap: float) -> dict[str, Any]:
    devices, payloads = _job(base, n)
    ways: dict[str, Any] = {}
    for f in fleets:
        ways[f"fleet-x{f}"] = await _fleet(base, scratch / f"fleet{f}", devices, payloads, f)
        say(f"{n} devices, {f} fleet process(es): {ways[f'fleet-x{f}']['devices_per_s']:.1f} devices/s")
    for way, fleet_order in (("plain-loop", False), ("plain-loop-fleet-order", True)):
        ways[way] = await _plain_loop(base.replace(state_dir=scratch / way), devices[:PLAIN_SAMPLE], payloads,
                                      fleet_order)
        say(f"{n} devices, {way} ({ways[way]['devices_timed']} timed): {ways[way]['devices_per_s']:.1f} devices/s")
    ways["flower"] = _flower(base.replace(state_dir=scratch / "flower"), devices, payloads, flower_cap,
                             actors=fleets[0])
    say(f"{n} devices, Flower: {ways['flower'].get('devices_per_s', ways['flower'].get('skipped'))}")
    fleet = ways[f"fleet-x{fleets[0]}"]["devices_per_s"]
    flower = ways["flower"].get("devices_per_s")
    cpu = ways[f"fleet-x{fleets[0]}"]["cpu_s_per_device"]
    return {"devices": n, "ways": ways,
            "fleet_over_plain_loop": fleet / ways["plain-loop"]["devices_per_s"],
            "fleet_cpu_over_plain_loop": cpu / ways["plain-loop"]["cpu_s_per_device"],
            "fleet_cpu_over_fleet_order_loop": cpu / ways["plain-loop-fleet-order"]["cpu_s_per_device"],
            "fleet_over_flower": fleet / flower if flower else None}


async def _large_cycle(base: Settings, scratch: Path, processes: int) -> dict[str, Any]:
    """`LARGE_SIZE` devices' daily cycle in `processes` fleet processes (the scale target), timed like the sizes."""
    devices, payloads = _job(base, LARGE_SIZE)
    cycle = await _fleet(base, scratch, devices, payloads, processes)
    say(f"{LARGE_SIZE} devices, daily cycle: {cycle['seconds']:.0f} s, {cycle['devices_per_s']:.1f} devices/s")
    return {"devices": LARGE_SIZE, **cycle}


# --------------------------------------------------------------------------- fleet
async def _fleet(base: Settings, state: Path, devices: DevicesJob, payloads: list[bytes],
                 processes: int, then: Any = None) -> dict[str, Any]:
    """The daily cycle through `processes` fleet processes; `then(s, topics, procs)` runs on the same fleets after."""
    from core.privacy import device_pseudonym
    from ops.stack.namespace import in_namespace
    from ops.stack.pipeline import Processes
    from streams.kafka import consumer, ensure_topics, producer
    from streams.schemas import DeviceActions, PullRequest, decode, encode
    from streams.topics import load_topics

    s = in_namespace(base.replace(state_dir=state), f"fleet-{int(time.time())}-{processes}")
    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    procs = Processes(s)
    for i in range(processes):
        procs.spawn("fleet", str(i), "--quiet")
    usage = Usage([psutil.Process(p.pid) for p in procs.procs])
    await _joined(s, processes, procs)  # time the daily cycle, not the group join
    usage.start()
    pub, up = producer(s), consumer(s, topics.name("up"), auto_offset_reset="earliest", enable_auto_commit=False)
    await pub.start()
    await up.start()
    try:
        start = time.time()
        for device_id, events in devices:
            key = device_pseudonym(s.pseudonym_key, device_id).encode()
            await pub.send(topics.name("actions"), encode(DeviceActions(device_id, events, events[0].ts // DAY)), key=key)
        await pub.flush()
        answered: set[str] = set()
        while len(answered) < len(devices):
            procs.check()
            for records in (await up.getmany(timeout_ms=300)).values():
                for r in records:
                    msg = decode(r.value, 1 << 30)
                    if isinstance(msg, PullRequest) and msg.device_id not in answered:
                        answered.add(msg.device_id)
                        await _answer(pub, topics, s, msg, payloads)
            usage.sample()
        await pub.flush()
        while sum(_fleet_counts(s, i).get("notices", 0) for i in range(processes)) < len(devices):
            procs.check()
            usage.sample()
            await asyncio.sleep(0.3)
        stats = [_fleet_stats(s, i) for i in range(processes)]
        # the stats file is written every few seconds: the fleet's own clock says when it finished
        end = max(st.get("last_processed_at", 0.0) for st in stats)
        report = usage.report(len(devices), end - start)
        members = [{k: st.get(k) for k in ("partitions", "devices_hosted")} for st in stats]
        # a pool smaller than the devices closes a database between a device's actions and its batches
        opened = sum(st.get("pool", {}).get("opened", 0) for st in stats)
        report["databases_opened_per_device"] = opened / len(devices)
        if then is not None:
            report["then"] = await then(s, topics, procs)
    finally:
        await up.stop()
        await pub.stop()
        procs.stop()
    return {**report, "processes": processes, "members": members}


async def _answer(pub: Any, topics: Any, s: Settings, pull: Any, payloads: list[bytes]) -> None:
    """The cloud's side of a pull: the day's batches for this device, then the quota notice."""
    from core.privacy import device_pseudonym
    from streams.schemas import DownBatch, DownNotice, encode

    device = device_pseudonym(s.pseudonym_key, pull.device_id)
    day = pull.ts // DAY
    for b, payload in enumerate(payloads):
        msg = DownBatch(device, f"{pull.request_id}-{b}", pull.request_id, day, BATCH_SAMPLES, payload,
                        of=len(payloads))
        await pub.send(topics.name("down"), encode(msg), key=device.encode())
    await pub.send(topics.name("down"), encode(DownNotice(device, pull.request_id, day, "quota", len(payloads))),
                   key=device.encode())


async def _joined(s: Settings, processes: int, procs: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check()
        assigned = [_fleet_stats(s, i).get("partitions") for i in range(processes)]
        if all(assigned) and sum(len(a) for a in assigned) == 8:
            return
        await asyncio.sleep(0.3)
    raise TimeoutError("fleets did not join their consumer group")


def _fleet_stats(s: Settings, fleet_id: int) -> dict[str, Any]:
    try:
        return json.loads((s.state_dir / "fleets" / f"{fleet_id}.json").read_text())
    except (OSError, ValueError):
        return {}


def _fleet_counts(s: Settings, fleet_id: int) -> dict[str, Any]:
    return _fleet_stats(s, fleet_id).get("counts", {})


# --------------------------------------------------------------------------- plain loop
async def _plain_loop(s: Settings, devices: DevicesJob, payloads: list[bytes],
                      fleet_order: bool = False) -> dict[str, Any]:
    """The same Device code called directly: no broker, no fleet.

    One device's whole day after another (the ceiling), or, with `fleet_order`, in the order and
    concurrency a fleet receives the work: every device's actions, then every device's batches,
    `fleet_concurrency` devices at once. The fleet against this second way is the broker's hops
    and the fleet's dispatch alone; against the first it also pays for its order — a pool smaller
    than the devices closes each database between its actions and its batches.
    """
    from device.initialmodel import fresh_initial
    from device.runtime import Runtime
    from device.torchconfig import configure_torch

    configure_torch(s.torch_threads)
    runtime = Runtime(s, fresh_initial(s.features))
    await runtime.warm_up()
    usage = Usage([psutil.Process()])
    usage.start()
    start = time.monotonic()
    if fleet_order:
        await _in_fleet_order(runtime, devices, payloads)
    else:
        for device_id, events in devices:
            await _device_day(runtime, device_id, events, payloads)
    seconds = time.monotonic() - start
    usage.sample()
    report = usage.report(len(devices), seconds)
    report["databases_opened_per_device"] = runtime.pool.stats.opened / len(devices)
    await runtime.close()
    return report


async def _in_fleet_order(runtime: Any, devices: DevicesJob, payloads: list[bytes]) -> None:
    """Every device's report, then every device's batches, `fleet_concurrency` devices at once."""
    in_flight = asyncio.Semaphore(runtime.settings.fleet_concurrency)

    async def limited(job: Any) -> Any:
        async with in_flight:
            return await job

    reported = await asyncio.gather(*(limited(_report_day(runtime, d, events)) for d, events in devices))
    await asyncio.gather(*(limited(_take_batches(device, events, payloads))
                           for device, (_, events) in zip(reported, devices, strict=True)))


# --------------------------------------------------------------------------- Flower
def _flower(s: Settings, devices: DevicesJob, payloads: list[bytes], cap_s: float, actors: int) -> dict[str, Any]:
    """Flower's simulation engine in a child process; skipped with the reason when it is not installed."""
    missing = [m for m in ("flwr", "ray") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed (pip install -e '.[bench]')"}
    s.state_dir.mkdir(parents=True, exist_ok=True)
    job, result = s.state_dir / "job.pickle", s.state_dir / "result.json"
    progress, started = s.state_dir / "progress.log", s.state_dir / "started"
    job.write_bytes(pickle.dumps({"settings": s, "devices": devices, "payloads": payloads, "actors": actors,
                                  "progress": str(progress), "started": str(started)}))
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}  # nothing leaves this machine
    log = s.state_dir / "flower.log"
    with open(log, "wb") as out:
        # a session of its own: Ray's actor processes outlive ray.shutdown() (orphaned, still
        # spinning), and the session id is how we find them afterwards
        child = subprocess.Popen([sys.executable, "-m", "ops.bench.fleet", "flower", str(job), str(result)],
                                 env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    try:
        measured = _flower_round(child, started, progress, result, cap_s, len(devices))
    finally:
        _end([p for p in psutil.process_iter() if _session(p) == child.pid])
    if measured is None:
        tail = log.read_text(errors="replace")[-2000:]
        return {"skipped": f"Flower run failed (exit {child.poll()}); log tail: {tail}"}
    return {**measured, "clients": len(devices), "actors": actors}


def _flower_round(child: subprocess.Popen[bytes], started: Path, progress: Path, result: Path,
                  cap_s: float, clients: int) -> dict[str, Any] | None:
    """Time Flower's round of all clients from the parent: to completion, or until `cap_s` seconds."""
    deadline = time.monotonic() + FLOWER_START_TIMEOUT_S
    while not started.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    usage = Usage([p for p in psutil.process_iter() if _session(p) == child.pid])
    usage.start()
    t0 = float(started.read_text())
    while child.poll() is None and time.time() - t0 < cap_s:
        usage.sample()
        time.sleep(0.5)
    if child.poll() == 0 and result.exists():  # the round completed: its own timing
        return {**json.loads(result.read_text()), "round": "complete", "done": clients}
    if child.poll() is not None:
        return None
    done = len(progress.read_text().split()) if progress.exists() else 0
    seconds = time.time() - t0
    if not done:
        return {"skipped": f"no Flower client finished in {seconds:.0f} s", "round": f"unfinished: 0 of {clients} done"}
    return {**usage.report(done, seconds), "done": done,
            "round": f"unfinished: {done} of {clients} done in {seconds:.0f} s"}


# The Flower client runs in Ray actor processes: each keeps one event loop and one warmed-up
# Runtime, exactly as the plain loop and a fleet process do, and loads the job once.
_ACTOR: dict[str, Any] = {}


def _actor_state(job_path: str) -> dict[str, Any]:
    if not _ACTOR:
        from device.initialmodel import fresh_initial
        from device.runtime import Runtime

        job = pickle.loads(Path(job_path).read_bytes())
        loop = asyncio.new_event_loop()
        runtime = Runtime(job["settings"], fresh_initial(job["settings"].features))
        loop.run_until_complete(runtime.warm_up())
        _ACTOR.update(job=job, loop=loop, runtime=runtime)
    return _ACTOR


def _flower_apps(job_path: str, out: dict[str, Any]) -> tuple[Any, Any]:
    """A ClientApp that runs one device's day per `train` message; a ServerApp that times one round of all."""
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    client, server = ClientApp(), ServerApp()

    @client.query()
    def warm(msg: Message, context: Context) -> Message:
        _actor_state(str(msg.content["job"]["path"]))
        return Message(RecordDict({"m": MetricRecord({"pid": os.getpid()})}), reply_to=msg)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        state = _actor_state(str(msg.content["job"]["path"]))
        device_id, events = state["job"]["devices"][int(context.node_config["partition-id"])]
        state["loop"].run_until_complete(_device_day(state["runtime"], device_id, events, state["job"]["payloads"]))
        with open(state["job"]["progress"], "a") as done:  # the parent times a long round from these
            done.write(f"{time.time()}\n")
        return Message(RecordDict({"m": MetricRecord({"pid": os.getpid()})}), reply_to=msg)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        job = pickle.loads(Path(job_path).read_bytes())
        clients, actors = len(job["devices"]), job["actors"]
        while len(nodes := sorted(grid.get_node_ids())) < clients:  # the engine registers them meanwhile
            time.sleep(0.1)
        def round_(kind: str, to: Sequence[int]) -> list[Message]:
            messages = [Message(RecordDict({"job": ConfigRecord({"path": job_path})}), dst_node_id=n,
                                message_type=kind) for n in to]
            return list(grid.send_and_receive(messages))

        round_("query", nodes[:max(actors, 1) * 2])  # start and warm every actor before timing
        usage = Usage([psutil.Process()])
        usage.start()
        sampler = _Sampler(usage)
        start = time.monotonic()
        Path(job["started"] + ".part").write_text(str(time.time()))
        Path(job["started"] + ".part").replace(job["started"])  # whole, or not there yet
        replies = round_("train", nodes)
        seconds = time.monotonic() - start
        sampler.stop()
        failed = [r.error.reason for r in replies if r.has_error()]
        if failed or len(replies) < clients:
            raise RuntimeError(f"{len(failed)} Flower client(s) failed, {len(replies)}/{clients} replied: {failed[:1]}")
        out.update(usage.report(clients, seconds))

    return client, server


class _Sampler:
    """Samples `usage` RSS every half second from a thread (Flower's round blocks its caller)."""

    def __init__(self, usage: Usage) -> None:
        self.usage, self._stop = usage, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.usage.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.usage.sample()


def _flower_child(job_path: Path, result_path: Path) -> None:
    """Child process: N supernodes in Flower's simulation engine, one timed round of all of them."""
    import ray
    from flwr.simulation import run_simulation

    job = pickle.loads(job_path.read_bytes())
    out: dict[str, Any] = {}
    client, server = _flower_apps(str(job_path), out)
    # one actor per CPU given to Ray; the object store at its floor: the job is read from disk
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": job["actors"], "object_store_memory": 80 * 2**20,
                             "logging_level": "ERROR", "log_to_driver": False}}
    started = time.monotonic()
    try:
        run_simulation(server, client, num_supernodes=len(job["devices"]), backend_config=backend)
    finally:
        ray.shutdown()
    if not out:
        raise RuntimeError("Flower's ServerApp ended without a measurement (see the log above)")
    out["engine_seconds"] = time.monotonic() - started
    result_path.write_text(json.dumps(out))


def _session(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except OSError:
        return None


def _end(procs: list[psutil.Process], timeout_s: float = 5.0) -> None:
    """Terminate what is still running of `procs`, then kill what ignores it."""
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, left = psutil.wait_procs(alive, timeout=timeout_s)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


if __name__ == "__main__" and sys.argv[1:2] == ["flower"]:
    # through the importable module, not __main__: Ray then pickles the client's helpers by
    # reference, so each actor keeps one `_ACTOR` (loop, warmed Runtime) across messages
    from ops.bench import fleet

    fleet._flower_child(Path(sys.argv[2]), Path(sys.argv[3]))
