"""The one typed settings object: paper defaults, each field overridable by a named env variable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.features import FeatureSpace

ENV_PREFIX = "CODA_"


def _env(name: str) -> dict[str, str]:
    return {"env": ENV_PREFIX + name.upper()}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the system. `Settings.from_env()` is called once, at the entry point.

    Field metadata names the environment variable; the README's configuration table is
    generated from these fields (`coda config`).
    """

    # --- where things run ---------------------------------------------------------------
    state_dir: Path = field(default=Path(".coda"), metadata=_env("state_dir"))
    bootstrap: str = field(default="", metadata=_env("bootstrap"))  # empty: embedded Tansu
    broker_port: int = field(default=0, metadata=_env("broker_port"))  # 0: a free port
    security_protocol: str = field(default="PLAINTEXT", metadata=_env("security_protocol"))
    sasl_mechanism: str = field(default="", metadata=_env("sasl_mechanism"))
    sasl_username: str = field(default="", metadata=_env("sasl_username"))
    sasl_password: str = field(default="", metadata=_env("sasl_password"))
    ssl_cafile: str = field(default="", metadata=_env("ssl_cafile"))
    ssl_certfile: str = field(default="", metadata=_env("ssl_certfile"))
    ssl_keyfile: str = field(default="", metadata=_env("ssl_keyfile"))
    topic_prefix: str = field(default="coda", metadata=_env("topic_prefix"))
    topics_file: Path = field(default=Path(""), metadata=_env("topics_file"))  # empty: bundled
    index_url: str = field(default="edge://", metadata=_env("index_url"))
    app_id: str = field(default="coda", metadata=_env("app_id"))
    pseudonym_key: str = field(default="coda-local-dev-key", metadata=_env("pseudonym_key"))
    log_level: str = field(default="WARNING", metadata=_env("log_level"))
    # --- wire limits ----------------------------------------------------------------------
    max_envelope_bytes: int = field(default=1_000_000, metadata=_env("max_envelope_bytes"))
    max_events_per_envelope: int = field(default=5_000, metadata=_env("max_events_per_envelope"))
    # --- features -------------------------------------------------------------------------
    item_buckets: int = field(default=4096, metadata=_env("item_buckets"))
    tag_buckets: int = field(default=256, metadata=_env("tag_buckets"))
    profile_buckets: int = field(default=256, metadata=_env("profile_buckets"))
    seq_len: int = field(default=20, metadata=_env("seq_len"))
    # the user vector of Algorithm 1: "sequence" (the paper: behaviour-sequence tag histogram) or
    # "clicks" (tags of clicked items: taste even where exposure says nothing about it)
    match_feature: str = field(default="sequence", metadata=_env("match_feature"))
    # Algorithm 2's classifier input: "sequence" (the paper) or "outcome" (plus the sample's
    # clicked-or-passed target tags)
    classifier_input: str = field(default="sequence", metadata=_env("classifier_input"))
    # --- cloud matching (paper section 4.2) -----------------------------------------------
    k_neighbours: int = field(default=100, metadata=_env("k_neighbours"))
    batch_size: int = field(default=25, metadata=_env("batch_size"))
    batch_max: int = field(default=40, metadata=_env("batch_max"))
    batches_per_day: int = field(default=12, metadata=_env("batches_per_day"))
    match_window_days: int = field(default=7, metadata=_env("match_window_days"))
    # --- device (paper sections 3.3, 3.4, 4.4) ----------------------------------------------
    classifier_share: float = field(default=1 / 3, metadata=_env("classifier_share"))
    sigma: float = field(default=0.2, metadata=_env("sigma"))
    max_local_samples: int = field(default=200, metadata=_env("max_local_samples"))
    max_outside_samples: int = field(default=200, metadata=_env("max_outside_samples"))
    train_trigger: int = field(default=100, metadata=_env("train_trigger"))
    lifecycle_t_days: int = field(default=3, metadata=_env("lifecycle_t_days"))
    lifecycle_t2_days: int = field(default=7, metadata=_env("lifecycle_t2_days"))
    emb_dim: int = field(default=3, metadata=_env("emb_dim"))
    learning_rate: float = field(default=0.01, metadata=_env("learning_rate"))  # the global model's
    train_batch: int = field(default=32, metadata=_env("train_batch"))
    # Algorithm 3 on the device: its own learning rate (the global model keeps learning_rate),
    # passes over the training samples, and when the gate judges: "step" (after every
    # mini-batch, the paper) or "epoch" (after each pass)
    device_learning_rate: float = field(default=0.01, metadata=_env("device_learning_rate"))
    train_epochs: int = field(default=1, metadata=_env("train_epochs"))
    gate: str = field(default="step", metadata=_env("gate"))
    # "events": a device pulls as soon as it reported new events (live); "day_end": it pulls on
    # the end-of-day tick, after the cloud has indexed the whole day (exact, repeatable replays)
    pull_trigger: str = field(default="events", metadata=_env("pull_trigger"))
    # "coda": every device runs CoDA (the product); "buckets": an experiment, each device gets one
    # arm (cloud | local | coda | coda_nofilter | coda_random) from a hash of (arm_seed, pseudonym)
    arm_mode: str = field(default="coda", metadata=_env("arm_mode"))
    arm_seed: int = field(default=0, metadata=_env("arm_seed"))
    # which CTR-model parameters Algorithm 3 personalizes: "all" (the paper) | "mlp" | "head"
    personalize: str = field(default="all", metadata=_env("personalize"))
    # Algorithm 3's gate when the local validation samples hold one class (AUC undefined):
    # "fit" accepts steps that fit those labels better (exp(−logloss)); "skip" trains not at all
    one_class_gate: str = field(default="fit", metadata=_env("one_class_gate"))
    open_databases: int = field(default=64, metadata=_env("open_databases"))
    # devices a fleet process handles at once: enough to overlap one device's disk waits with
    # another's torch job; more only makes their SQLite threads queue for the GIL (1,000-device
    # cycles: 0.051–0.062 CPU s a device at 1–4, 0.058–0.065 at 64, the same devices/s)
    fleet_concurrency: int = field(default=4, metadata=_env("fleet_concurrency"))
    torch_threads: int = field(default=1, metadata=_env("torch_threads"))
    # a device's torch jobs run on the event loop's thread (one at a time, as the single torch
    # thread ran them): handing each job to a thread cost ~40 % more CPU a device, the small
    # ops trading the GIL with the loop and SQLite threads; a job holds the loop ~10–30 ms
    torch_on_loop: bool = field(default=True, metadata=_env("torch_on_loop"))
    # --- Faust / broker timeouts (Tansu joins are slow with Faust's defaults) ---------------
    rebalance_timeout_s: float = field(default=6.0, metadata=_env("rebalance_timeout_s"))
    session_timeout_s: float = field(default=6.0, metadata=_env("session_timeout_s"))
    heartbeat_interval_s: float = field(default=1.0, metadata=_env("heartbeat_interval_s"))
    # Faust hard-codes a 1.5 s fetch wait; every agent hop of a pull paid it on Tansu
    fetch_max_wait_ms: int = field(default=20, metadata=_env("fetch_max_wait_ms"))
    take_max: int = field(default=500, metadata=_env("take_max"))  # records per fleet poll
    # the ingest and user-vector agents fold each event with those already waiting behind
    # it, up to agent_batch at once; 1: one at a time (see CloudContext.batches)
    agent_batch: int = field(default=500, metadata=_env("agent_batch"))

    @property
    def features(self) -> FeatureSpace:
        return FeatureSpace(self.item_buckets, self.tag_buckets, self.profile_buckets, self.seq_len,
                            self.match_feature, self.classifier_input)

    @property
    def embedded(self) -> bool:
        """True when the local stack owns the broker (no external bootstrap configured)."""
        return not self.bootstrap

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults ← environment variables ← explicit overrides (CLI options)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw, f.metadata["env"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """Environment variables that reproduce these settings in a child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}

    def table(self) -> list[tuple[str, str, str]]:
        """(env variable, default, field) rows for docs and `coda config`."""
        defaults = Settings()
        return [(f.metadata["env"], str(getattr(defaults, f.name)), f.name) for f in fields(self)]


def _parse(name: str, annotation: Any, raw: str, env: str) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "str")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{env}={raw!r} is not a valid {kind} for setting {name!r}") from exc
