"""topics.yaml: the bundled file is valid and complete; invalid entries are named precisely."""

from __future__ import annotations

import copy

import pytest
import yaml

from streams import schemas
from streams.topics import BUNDLED, TopicsError, load_topics, parse_topics, write_flow_partitions


def test_bundled_topics_declare_the_whole_flow() -> None:
    """Every stage of docs/design.md's data flow has its topic; compacted vectors; dead letters."""
    topics = load_topics()
    names = {t.name for t in topics}
    assert {"up", "samples", "user-vectors", "match-requests", "neighbour-queries", "gather",
            "down", "dead-letters"} <= names
    assert topics["user-vectors"].cleanup == "compact"
    assert topics.name("up") == "coda.up"


def test_every_message_kind_belongs_to_exactly_one_topic() -> None:
    """Each wire kind (except nested ones) travels on exactly one topic."""
    nested = {schemas.BehaviourEvent, schemas.SampleRecord, schemas.SampleSet}
    owners: dict[type, list[str]] = {}
    for spec in load_topics():
        for kind in spec.kinds:
            owners.setdefault(kind, []).append(spec.name)
    state = {k for k in schemas.REGISTRY.values() if k.KIND.startswith("state.")}  # changelogs
    shared = {schemas.DayEnd}  # the end-of-day tick closes days on samples and on actions
    for kind in set(schemas.REGISTRY.values()) - nested - state - shared:
        assert len(owners.get(kind, [])) == 1, (kind.__name__, owners.get(kind))


def _doc() -> dict:
    return yaml.safe_load(BUNDLED.read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["topics"][3].pop("partitions"), r"topics\[3\] \(user-vectors\): missing key 'partitions'"),
        (lambda d: d["topics"][0].update(partitions=0), r"topics\[0\] \(up\): key 'partitions'"),
        (lambda d: d["topics"][2].update(value="Nope"), r"topics\[2\] \(samples\): key 'value' = 'Nope'"),
        (lambda d: d["topics"][1].update(cleanup="keep"), r"key 'cleanup'"),
        (lambda d: d["topics"][1].update(retention="a week"), r"key 'retention'"),
        (lambda d: d["topics"][1].update(colour="red"), r"unknown key\(s\) \['colour'\]"),
        (lambda d: d["topics"].append(copy.deepcopy(d["topics"][0])), r"\(up\): duplicate name"),
        (lambda d: d.pop("topics"), r"top-level 'topics:' list"),
    ],
)
def test_invalid_entries_name_entry_and_key(mutate, message: str) -> None:
    """Validation errors name the offending entry and key."""
    doc = _doc()
    mutate(doc)
    with pytest.raises(TopicsError, match=message):
        parse_topics(doc)


def test_retention_parses() -> None:
    """Durations become retention.ms; forever is -1."""
    topics = load_topics()
    assert topics["up"].retention_ms == 7 * 86_400_000
    assert topics["models"].retention_ms == -1


def test_flow_partitions_change_the_co_partitioned_topics_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bundled = load_topics()
    out = write_flow_partitions(None, 2, tmp_path / "topics.yaml")
    narrowed = load_topics(out)
    flow = bundled["up"].partitions
    for spec in bundled:
        assert narrowed[spec.name].partitions == (2 if spec.partitions == flow else spec.partitions), spec.name
    assert narrowed["models"].partitions == bundled["models"].partitions == 1
    with pytest.raises(TopicsError, match="1..1024"):
        write_flow_partitions(None, 0, tmp_path / "zero.yaml")


def test_the_app_and_its_tables_take_the_flow_partitions_from_the_topics_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agents.context import CloudContext
    from streams.app import create_app
    from streams.settings import Settings

    settings = Settings(state_dir=tmp_path, bootstrap="127.0.0.1:9",
                        topics_file=write_flow_partitions(None, 3, tmp_path / "topics.yaml"))
    topics = load_topics(settings.topics_file, settings.topic_prefix)
    app = create_app(settings, topics)
    assert app.conf.topic_partitions == 3
    assert CloudContext(settings, topics, app).table("devices").partitions == 3
