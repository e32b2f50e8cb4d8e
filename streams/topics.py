"""topics.yaml parsed into typed specs; the app, topic creation and replay all read it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streams.schemas import SCHEMAS, Record

BUNDLED = Path(__file__).resolve().parent.parent / "topics.yaml"
REQUIRED = ("name", "partitions", "key", "value", "cleanup", "retention", "owner")
_RETENTION = re.compile(r"^(forever|\d+(ms|s|m|h|d))$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class TopicsError(ValueError):
    """topics.yaml is invalid; the message names the entry and key."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    value: str
    cleanup: str
    retention: str
    owner: str
    description: str = ""

    @property
    def kinds(self) -> tuple[type[Record], ...]:
        return SCHEMAS[self.value]

    @property
    def retention_ms(self) -> int:
        if self.retention == "forever":
            return -1
        num, unit = re.match(r"(\d+)(ms|s|m|h|d)", self.retention).groups()  # type: ignore[union-attr]
        return int(num) * _UNIT_MS[unit]

    def full_name(self, prefix: str) -> str:
        return f"{prefix}.{self.name}" if prefix else self.name

    def config(self) -> dict[str, str]:
        """Kafka topic configs for creation."""
        return {"cleanup.policy": self.cleanup, "retention.ms": str(self.retention_ms)}


@dataclass(frozen=True, slots=True)
class Topics:
    specs: tuple[TopicSpec, ...]
    prefix: str

    def __getitem__(self, name: str) -> TopicSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(f"no topic {name!r} in topics.yaml")

    def name(self, name: str) -> str:
        return self[name].full_name(self.prefix)

    @property
    def flow_partitions(self) -> int:
        """Partitions of the co-partitioned flow (`up`'s count): the Faust app and its tables take it too."""
        return self["up"].partitions

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.specs)


def load_topics(path: Path | None = None, prefix: str = "coda") -> Topics:
    path = _resolved(path)
    return parse_topics(_read(path), prefix, str(path))


def _resolved(path: Path | None) -> Path:
    return path if path and str(path) not in ("", ".") else BUNDLED


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopicsError(f"{path}: cannot read: {exc}") from None


def write_flow_partitions(source: Path | None, partitions: int, out: Path) -> Path:
    """A copy of a topics file whose co-partitioned flow (every topic with `up`'s count) has `partitions`.

    Partitions are the unit of scale-out: a pipeline of one worker and one fleet gains nothing from
    eight, and pays for them in every fetch (the broker walks each partition a consumer asks for)
    and every pull (a scatter sends one neighbour query per partition holding neighbours).
    """
    if not 1 <= partitions <= 1024:
        raise TopicsError(f"partitions must be an integer in 1..1024, got {partitions}")
    path = _resolved(source)
    doc = _read(path)
    flow = parse_topics(doc, source=str(path)).flow_partitions
    for entry in doc["topics"]:
        if entry["partitions"] == flow:
            entry["partitions"] = partitions
    parse_topics(doc, source=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def parse_topics(doc: Any, prefix: str = "coda", source: str = "topics.yaml") -> Topics:
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), list):
        raise TopicsError(f"{source}: expected a top-level 'topics:' list")
    specs, seen = [], set()
    for i, entry in enumerate(doc["topics"]):
        spec = _parse_entry(entry, f"{source}: topics[{i}]")
        if spec.name in seen:
            raise TopicsError(f"{source}: topics[{i}] ({spec.name}): duplicate name")
        seen.add(spec.name)
        specs.append(spec)
    return Topics(tuple(specs), prefix)


def _parse_entry(entry: Any, where: str) -> TopicSpec:
    if not isinstance(entry, dict):
        raise TopicsError(f"{where}: expected a mapping")
    label = f"{where} ({entry.get('name', '?')})"
    for key in REQUIRED:
        if key not in entry:
            raise TopicsError(f"{label}: missing key {key!r}")
    unknown = set(entry) - set(REQUIRED) - {"description"}
    if unknown:
        raise TopicsError(f"{label}: unknown key(s) {sorted(unknown)}")
    checks = {
        "name": (isinstance(entry["name"], str) and re.fullmatch(r"[a-z0-9][a-z0-9._-]*", entry["name"] or ""),
                 "a lowercase topic name"),
        "partitions": (isinstance(entry["partitions"], int) and not isinstance(entry["partitions"], bool)
                       and 1 <= entry["partitions"] <= 1024, "an integer in 1..1024"),
        "key": (isinstance(entry["key"], str) and entry["key"], "a non-empty string"),
        "value": (entry["value"] in SCHEMAS, f"a schema name from streams/schemas ({', '.join(sorted(SCHEMAS))})"),
        "cleanup": (entry["cleanup"] in ("delete", "compact"), "'delete' or 'compact'"),
        "retention": (isinstance(entry["retention"], str) and _RETENTION.match(entry["retention"]),
                      "'forever' or a duration like 7d, 12h, 30m"),
        "owner": (isinstance(entry["owner"], str) and entry["owner"], "a non-empty string"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            raise TopicsError(f"{label}: key {key!r} = {entry[key]!r} must be {expected}")
    return TopicSpec(**{k: entry[k] for k in (*REQUIRED, "description") if k in entry})
