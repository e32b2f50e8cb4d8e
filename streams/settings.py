"""The one typed settings object: paper defaults, each field overridable by a named env variable.

A pydantic model: types, enumerated values, strict booleans and numeric ranges are checked when
the settings are made (from the environment, the CLI or code), and an error names the
environment variable and what it accepts. Every field is declared on one line,
`name: type = field(default=…, metadata=_env("name"))`; ranges and choices go in the type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.features import FeatureSpace

ENV_PREFIX = "CODA_"
DEV_PSEUDONYM_KEY = "coda-local-dev-key"  # the default; refused against an external cluster (ops/stack/keys.py)

Count = Annotated[int, Field(ge=1)]  # at least one
NonNegative = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65_535)]  # 0: a free port
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _env(name: str) -> dict[str, str]:
    return {"env": ENV_PREFIX + name.upper()}


def field(default: Any = None, metadata: dict[str, str] | None = None, default_factory: Any = None) -> Any:
    """A setting: its default (or default factory) and the environment variable that overrides it.

    Same call shape as `dataclasses.field`, so a setting is declared the way it always was.
    """
    if default_factory is not None:
        return Field(default_factory=default_factory, json_schema_extra=metadata)  # type: ignore[arg-type]
    return Field(default=default, json_schema_extra=metadata)  # type: ignore[arg-type]


# the settings' sections, in declaration order: every field belongs to exactly one
SECTIONS: dict[str, tuple[str, ...]] = {
    "broker": (
        "state_dir", "bootstrap", "broker_port", "security_protocol", "sasl_mechanism", "sasl_username",
        "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "topic_prefix", "topics_file", "app_id",
        "pseudonym_key", "allow_dev_key", "log_level", "metrics_host", "worker_metrics_port",
        "fleet_metrics_port", "max_envelope_bytes", "max_events_per_envelope", "rebalance_timeout_s",
        "session_timeout_s", "heartbeat_interval_s", "commit_interval_s", "fetch_max_wait_ms", "take_max", "agent_batch",
        "table_standby_replicas",
    ),
    "matching": (
        "index_url", "item_buckets", "tag_buckets", "profile_buckets", "seq_len", "sequence_actions", "match_feature",
        "match_period_days", "k_neighbours", "batch_size", "batch_max", "batches_per_day",
        "match_window_days",
    ),
    "device": (
        "classifier_model", "classifier_input", "classifier_share", "sigma", "max_local_samples", "max_outside_samples",
        "train_trigger", "lifecycle_t_days", "lifecycle_t2_days", "emb_dim", "learning_rate", "train_batch",
        "device_learning_rate", "train_epochs", "gate", "train_patience", "personalize", "one_class_gate", "pull_trigger",
        "open_databases", "fleet_concurrency", "torch_threads", "torch_on_loop",
    ),
    "experiment": (
        "arm_mode", "arm_seed",
    ),
}


class SettingsError(ValueError):
    """Settings that make no sense; the message names each variable and what it accepts."""


class Settings(BaseModel):
    """Every knob of the system. `Settings.from_env()` is called once, at the entry point.

    Field metadata names the environment variable; the README's configuration table is
    generated from these fields (`coda config`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    # --- broker: where things run, the connection, topics, processes, wire limits and Faust timeouts ---
    state_dir: Path = field(default=Path(".coda"), metadata=_env("state_dir"))
    bootstrap: str = field(default="", metadata=_env("bootstrap"))  # empty: embedded Tansu
    broker_port: Port = field(default=0, metadata=_env("broker_port"))  # 0: a free port
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = field(default="PLAINTEXT", metadata=_env("security_protocol"))
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"] = field(default="", metadata=_env("sasl_mechanism"))
    sasl_username: str = field(default="", metadata=_env("sasl_username"))
    sasl_password: str = field(default="", metadata=_env("sasl_password"))
    ssl_cafile: str = field(default="", metadata=_env("ssl_cafile"))
    ssl_certfile: str = field(default="", metadata=_env("ssl_certfile"))
    ssl_keyfile: str = field(default="", metadata=_env("ssl_keyfile"))
    topic_prefix: str = field(default="coda", metadata=_env("topic_prefix"))
    topics_file: Path = field(default=Path(""), metadata=_env("topics_file"))  # empty: bundled
    app_id: str = field(default="coda", metadata=_env("app_id"))
    pseudonym_key: str = field(default=DEV_PSEUDONYM_KEY, metadata=_env("pseudonym_key"))
    # the development key above is refused against an external cluster unless this is true
    allow_dev_key: bool = field(default=False, metadata=_env("allow_dev_key"))
    log_level: LogLevel = field(default="WARNING", metadata=_env("log_level"))
    # Prometheus /metrics of each worker and fleet process (empty host: none); port 0 picks a free
    # one, N gives process i the port N + i; the bound URL is in <state dir>/metrics/<role>-<id>.json
    metrics_host: str = field(default="127.0.0.1", metadata=_env("metrics_host"))
    worker_metrics_port: Port = field(default=0, metadata=_env("worker_metrics_port"))
    fleet_metrics_port: Port = field(default=0, metadata=_env("fleet_metrics_port"))
    max_envelope_bytes: Count = field(default=1_000_000, metadata=_env("max_envelope_bytes"))
    max_events_per_envelope: Count = field(default=5_000, metadata=_env("max_events_per_envelope"))
    rebalance_timeout_s: Seconds = field(default=6.0, metadata=_env("rebalance_timeout_s"))
    session_timeout_s: Seconds = field(default=6.0, metadata=_env("session_timeout_s"))
    heartbeat_interval_s: Seconds = field(default=1.0, metadata=_env("heartbeat_interval_s"))
    # how often a worker commits what its agents finished; anything that waits for a quiet
    # namespace (an experiment's day barrier) sees the work done only once it is committed
    commit_interval_s: Seconds = field(default=1.0, metadata=_env("commit_interval_s"))
    # Faust hard-codes a 1.5 s fetch wait; every agent hop of a pull paid it on Tansu
    fetch_max_wait_ms: NonNegative = field(default=20, metadata=_env("fetch_max_wait_ms"))
    take_max: Count = field(default=500, metadata=_env("take_max"))  # records per fleet poll
    # the ingest and user-vector agents fold each event with those already waiting behind
    # it, up to agent_batch at once; 1: one at a time (see CloudContext.batches)
    agent_batch: Count = field(default=500, metadata=_env("agent_batch"))
    # 0, not Faust's 1: with the memory store a standby's copy is never used — a partition promoted
    # to active is re-read from its changelog's start (the store keeps no offset) — so a standby only
    # replays every changelog record on another worker (docs/scaling.md); with RocksDB, set 1
    table_standby_replicas: NonNegative = field(default=0, metadata=_env("table_standby_replicas"))
    # --- matching (paper section 4.2): features, the user vector, the index and the batches -----------
    index_url: str = field(default="edge://", metadata=_env("index_url"))
    item_buckets: Count = field(default=4096, metadata=_env("item_buckets"))
    tag_buckets: Count = field(default=256, metadata=_env("tag_buckets"))
    profile_buckets: Count = field(default=256, metadata=_env("profile_buckets"))
    seq_len: Count = field(default=20, metadata=_env("seq_len"))
    # which events extend the behaviour sequence every model and user vector reads: "all" (each
    # shown or clicked event) or "clicks" (only what the user clicked, and non-sample actions)
    sequence_actions: Literal["all", "clicks"] = field(default="all", metadata=_env("sequence_actions"))
    # the user vector of Algorithm 1: "sequence" (the paper: behaviour-sequence tag histogram) or
    # "clicks" (clicked items' tags less a third for passed ones: taste even where exposure says nothing)
    match_feature: Literal["sequence", "clicks"] = field(default="sequence", metadata=_env("match_feature"))
    # 0 (the paper): the user vector is one lifetime mean; N: that mean kept per N-day calendar
    # period (hashed into the same buckets), so users match on what they did in the same periods
    match_period_days: NonNegative = field(default=0, metadata=_env("match_period_days"))
    k_neighbours: Count = field(default=100, metadata=_env("k_neighbours"))
    batch_size: Count = field(default=25, metadata=_env("batch_size"))
    batch_max: Count = field(default=40, metadata=_env("batch_max"))
    batches_per_day: Count = field(default=12, metadata=_env("batches_per_day"))
    match_window_days: Count = field(default=7, metadata=_env("match_window_days"))
    # --- device (paper sections 3.3, 3.4, 4.4): the filter, Algorithm 3, the models and the fleet -----
    # Algorithm 2's classifier: "mlp" (the paper: a two-class model trained on local against
    # classifier_share of the matched samples) or "centroid" (a matched sample's score is the
    # cosine of its behaviour-sequence histogram to the local samples' mean: no training, no negatives)
    classifier_model: Literal["mlp", "centroid"] = field(default="mlp", metadata=_env("classifier_model"))
    # Algorithm 2's classifier input: "sequence" (the paper) or "outcome" (plus the sample's
    # clicked-or-passed target tags)
    classifier_input: Literal["sequence", "outcome"] = field(default="sequence", metadata=_env("classifier_input"))
    classifier_share: Share = field(default=1 / 3, metadata=_env("classifier_share"))
    sigma: Probability = field(default=0.2, metadata=_env("sigma"))
    max_local_samples: Count = field(default=200, metadata=_env("max_local_samples"))
    max_outside_samples: NonNegative = field(default=200, metadata=_env("max_outside_samples"))
    train_trigger: Count = field(default=100, metadata=_env("train_trigger"))
    lifecycle_t_days: Count = field(default=3, metadata=_env("lifecycle_t_days"))
    lifecycle_t2_days: Count = field(default=7, metadata=_env("lifecycle_t2_days"))
    emb_dim: Count = field(default=3, metadata=_env("emb_dim"))
    learning_rate: Rate = field(default=0.01, metadata=_env("learning_rate"))  # the global model's
    train_batch: Count = field(default=32, metadata=_env("train_batch"))
    # Algorithm 3 on the device: its own learning rate (the global model keeps learning_rate),
    # passes over the training samples, and when the gate judges: "step" (after every
    # mini-batch, the paper) or "epoch" (after each pass)
    device_learning_rate: Rate = field(default=0.01, metadata=_env("device_learning_rate"))
    train_epochs: Count = field(default=1, metadata=_env("train_epochs"))
    gate: Literal["step", "epoch"] = field(default="step", metadata=_env("gate"))
    # Algorithm 3 stops after this many rejected judgements in a row (0: never, the paper)
    train_patience: NonNegative = field(default=0, metadata=_env("train_patience"))
    # which CTR-model parameters Algorithm 3 personalizes: "all" (the paper) | "mlp" | "head"
    personalize: Literal["all", "mlp", "head"] = field(default="all", metadata=_env("personalize"))
    # Algorithm 3's gate when the local validation samples hold one class (AUC undefined):
    # "fit" accepts steps that fit those labels better (exp(−logloss)); "skip" trains not at all
    one_class_gate: Literal["fit", "skip"] = field(default="fit", metadata=_env("one_class_gate"))
    # "events": a device pulls as soon as it reported new events (live); "day_end": it pulls on
    # the end-of-day tick, after the cloud has indexed the whole day (exact, repeatable replays)
    pull_trigger: Literal["events", "day_end"] = field(default="events", metadata=_env("pull_trigger"))
    open_databases: Count = field(default=64, metadata=_env("open_databases"))
    # devices a fleet process handles at once: enough to overlap one device's disk waits with
    # another's torch job; more only makes their SQLite threads queue for the GIL (1,000-device
    # cycles: 0.051–0.062 CPU s a device at 1–4, 0.058–0.065 at 64, the same devices/s)
    fleet_concurrency: Count = field(default=4, metadata=_env("fleet_concurrency"))
    torch_threads: Count = field(default=1, metadata=_env("torch_threads"))
    # a device's torch jobs run on the event loop's thread (one at a time, as the single torch
    # thread ran them): handing each job to a thread cost ~40 % more CPU a device, the small
    # ops trading the GIL with the loop and SQLite threads; a job holds the loop ~10–30 ms
    torch_on_loop: bool = field(default=True, metadata=_env("torch_on_loop"))
    # --- experiment: which arm a device runs ----------------------------------------------------------
    # "coda": every device runs CoDA (the product); "buckets": an experiment, each device gets one
    # arm (cloud | local | coda | coda_nofilter | coda_random) from a hash of (arm_seed, pseudonym)
    arm_mode: Literal["coda", "buckets"] = field(default="coda", metadata=_env("arm_mode"))
    arm_seed: NonNegative = field(default=0, metadata=_env("arm_seed"))

    @model_validator(mode="before")
    @classmethod
    def _case(cls, values: Any) -> Any:
        """Log levels in any case, as logging takes them."""
        if isinstance(values, dict) and isinstance(values.get("log_level"), str):
            values = {**values, "log_level": values["log_level"].upper()}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.batch_max < self.batch_size:
            raise ValueError(f"CODA_BATCH_MAX={self.batch_max} is below CODA_BATCH_SIZE={self.batch_size}")
        if self.lifecycle_t2_days < self.lifecycle_t_days:
            raise ValueError(f"CODA_LIFECYCLE_T2_DAYS={self.lifecycle_t2_days} is below "
                             f"CODA_LIFECYCLE_T_DAYS={self.lifecycle_t_days}")
        return self

    @property
    def features(self) -> FeatureSpace:
        return FeatureSpace(self.item_buckets, self.tag_buckets, self.profile_buckets, self.seq_len,
                            self.match_feature, self.classifier_input, self.match_period_days,
                            self.sequence_actions)

    @property
    def embedded(self) -> bool:
        """True when the local stack owns the broker (no external bootstrap configured)."""
        return not self.bootstrap

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name → its environment variable, in declaration order."""
        return {name: f.json_schema_extra["env"] for name, f in cls.model_fields.items()}  # type: ignore[index]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults ← environment variables ← explicit overrides (CLI options)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {name: environ[env] for name, env in cls.env_names().items() if env in environ}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.checked(values)

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> Settings:
        """Validated settings, or a `SettingsError` naming each variable, its value and what it accepts."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise SettingsError(_explain(exc, values)) from None

    def replace(self, **changes: Any) -> Settings:
        return self.checked({**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    def to_env(self) -> dict[str, str]:
        """Environment variables that reproduce these settings in a child process."""
        return {env: str(getattr(self, name)) for name, env in self.env_names().items()}

    def section(self, name: str) -> dict[str, Any]:
        """The values of one section (broker, matching, device, experiment), by field name."""
        if name not in SECTIONS:
            raise KeyError(f"settings section {name!r}: expected one of {', '.join(SECTIONS)}")
        return {field_: getattr(self, field_) for field_ in SECTIONS[name]}

    def table(self) -> list[tuple[str, str, str, str]]:
        """(section, env variable, default, field) rows for docs and `coda config`, section by section."""
        defaults, envs = Settings(), self.env_names()
        return [(section, envs[name], str(getattr(defaults, name)), name)
                for section, names in SECTIONS.items() for name in names]


def _check_sections() -> None:
    """Every field in exactly one section, in declaration order: a new setting must say where it goes."""
    declared = tuple(Settings.model_fields)
    listed = tuple(name for names in SECTIONS.values() for name in names)
    if declared != listed:
        missing, extra = set(declared) - set(listed), set(listed) - set(declared)
        raise RuntimeError(f"streams/settings.py SECTIONS disagrees with the fields: not in a section {sorted(missing)}, "
                           f"not a field {sorted(extra)}, or out of declaration order")


_check_sections()


def _explain(exc: ValidationError, values: Mapping[str, Any]) -> str:
    envs = Settings.env_names()
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        if err["type"] == "bool_parsing":
            msg = "must be true or false (or 1/0, yes/no, on/off)"
        if name in envs:
            lines.append(f"{envs[name]}={values.get(name)!r}: {msg} (setting {name})")
        else:
            lines.append(msg if not name else f"{name}: {msg}")
    return "; ".join(lines)
