"""Tests for the dataset registry, the synthetic generator, MovieLens-100k and JSON Lines I/O."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasetkit import assert_refuses_tampered_download, cached_or_skip

from ops.datasets import (
    Dataset,
    DatasetUnavailable,
    EventFileError,
    default_cache_dir,
    load_dataset,
    read_events_jsonl,
    write_events_jsonl,
)
from ops.datasets import movielens as movielens_module
from ops.datasets.synthetic import item_catalogue

EVENT_TYPES = {
    "user_id": str,
    "device_id": str,
    "ts": int,
    "item_id": str,
    "item_tags": list,
    "action": str,
    "label": int,
    "profile": dict,
}


def _assert_schema(events: list[dict[str, Any]]) -> None:
    for e in events:
        assert set(e) == set(EVENT_TYPES), e
        for key, kind in EVENT_TYPES.items():
            assert type(e[key]) is kind, (key, e)
        assert e["action"] in {"click", "impression", "page_view"}
        assert e["label"] in (0, 1)
        assert e["label"] == int(e["action"] == "click")
        assert all(isinstance(t, str) for t in e["item_tags"])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e["profile"].items())
        assert e["device_id"] == f"dev-{e['user_id']}"
    keys = [(e["ts"], e["user_id"], e["item_id"]) for e in events]
    assert keys == sorted(keys)


def _click_rates(events: list[dict[str, Any]]) -> np.ndarray:
    labels: dict[str, list[int]] = defaultdict(list)
    for e in events:
        labels[e["user_id"]].append(e["label"])
    return np.array([np.mean(v) for v in labels.values()])


# --- synthetic ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth() -> Dataset:
    return load_dataset("synthetic", n_users=600, n_groups=4, heterogeneity=0.9, seed=7)


def test_synthetic_is_deterministic_by_seed() -> None:
    a = load_dataset("synthetic", n_users=50, seed=3)
    b = load_dataset("synthetic", n_users=50, seed=3)
    c = load_dataset("synthetic", n_users=50, seed=4)
    assert a.events == b.events and a.groups == b.groups and a.meta == b.meta
    assert a.events != c.events


def test_synthetic_schema_and_shape(synth: Dataset) -> None:
    _assert_schema(synth.events)
    assert synth.groups is not None and set(synth.groups) == {e["user_id"] for e in synth.events}
    assert set(synth.groups.values()) == set(range(4))
    per_user = Counter(e["user_id"] for e in synth.events)
    assert min(per_user.values()) >= 10 and max(per_user.values()) <= 40
    start, days = synth.meta["params"]["start_ts"], synth.meta["params"]["days"]
    assert all(start <= e["ts"] < start + days * 86_400 for e in synth.events)
    assert len({(e["user_id"], e["ts"]) for e in synth.events}) == len(synth.events)
    catalogue = dict(item_catalogue())
    assert all(e["item_tags"] == catalogue[e["item_id"]] for e in synth.events)
    assert 0.05 < synth.meta["click_rate"] < 0.95


def test_synthetic_options_are_validated() -> None:
    with pytest.raises(ValueError, match="heterogeneity"):
        load_dataset("synthetic", heterogeneity=1.5)
    with pytest.raises(TypeError):
        load_dataset("synthetic", no_such_option=1)


def test_synthetic_group_structure_shows_in_tag_clicks(synth: Dataset) -> None:
    """Users of the same group click similar tags more often than users of different groups."""
    tags = sorted({t for e in synth.events for t in e["item_tags"]})
    col = {t: n for n, t in enumerate(tags)}
    users = sorted(synth.groups or {})
    row = {u: n for n, u in enumerate(users)}
    hist = np.zeros((len(users), len(tags)))
    for e in synth.events:
        if e["label"]:
            hist[row[e["user_id"]], [col[t] for t in e["item_tags"]]] += 1
    hist /= np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)
    sim = hist @ hist.T
    group = np.array([(synth.groups or {})[u] for u in users])
    same = group[:, None] == group[None, :]
    off_diag = ~np.eye(len(users), dtype=bool)
    within, between = sim[same & off_diag].mean(), sim[~same].mean()
    assert within > between + 0.1, (within, between)


def test_synthetic_profiles_follow_groups(synth: Dataset) -> None:
    """Each group has a modal profile value that most (not all) members share."""
    by_group: dict[int, Counter[tuple[str, ...]]] = defaultdict(Counter)
    seen = set()
    for e in synth.events:
        if e["user_id"] not in seen:
            seen.add(e["user_id"])
            by_group[(synth.groups or {})[e["user_id"]]][tuple(sorted(e["profile"].items()))] += 1
    for counts in by_group.values():
        top_share = counts.most_common(1)[0][1] / sum(counts.values())
        assert 0.1 < top_share < 1.0


def _group_item_spread(ds: Dataset, min_count: int = 30) -> float:
    """Mean over items of the std, across groups, of the item's click rate."""
    labels: dict[tuple[int, str], list[int]] = defaultdict(list)
    for e in ds.events:
        labels[((ds.groups or {})[e["user_id"]], e["item_id"])].append(e["label"])
    per_item: dict[str, list[float]] = defaultdict(list)
    for (_, item), values in labels.items():
        if len(values) >= min_count:
            per_item[item].append(float(np.mean(values)))
    return float(np.mean([np.std(v) for v in per_item.values() if len(v) > 1]))


def test_heterogeneity_widens_click_rate_spread() -> None:
    """At 0 every group clicks an item alike; at 1 groups disagree, and users' click rates spread."""
    opts: dict[str, Any] = {"n_users": 300, "n_groups": 6, "events_per_user": 200, "seed": 1}
    low = load_dataset("synthetic", heterogeneity=0.0, **opts)
    high = load_dataset("synthetic", heterogeneity=1.0, **opts)
    assert _group_item_spread(high) > 3 * _group_item_spread(low)
    assert _click_rates(high.events).std() > _click_rates(low.events).std()
    for ds in (low, high):  # the intercept is calibrated, so the level stays put
        assert ds.meta["click_rate"] == pytest.approx(0.2, abs=0.02)


def test_synthetic_page_views_are_unlabelled_browsing() -> None:
    ds = load_dataset("synthetic", n_users=100, page_view_rate=0.5, seed=2)
    _assert_schema(ds.events)
    views = [e for e in ds.events if e["action"] == "page_view"]
    assert views and all(e["label"] == 0 and e["item_id"].startswith("page:") for e in views)
    plain = load_dataset("synthetic", n_users=100, seed=2)
    assert [e for e in ds.events if e["action"] != "page_view"] == plain.events


def test_drift_scenario_has_headroom_by_its_own_probabilities() -> None:
    """The drift preset: ranking live events by their true probabilities beats ranking them by the
    taste before the cut by at least 0.05 GAUC, and its groups are hidden from profiles and exposure."""
    from core.metrics import auc
    from ops.experiment.runner import DRIFT

    data = load_dataset("synthetic", seed=0, **{**DRIFT, "n_users": 240})
    truth, start = data.meta["truth"], data.meta["params"]["start_ts"]
    cut = DRIFT["change_days"][-1]
    by_user: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for e in data.events:
        if (e["ts"] - start) // 86_400 >= cut:
            by_user[e["user_id"]].append((e["label"], *truth[(e["user_id"], e["ts"])]))

    def gauc(column: int) -> float:
        num = den = 0.0
        for rows in by_user.values():
            labels = [r[0] for r in rows]
            if 0 < sum(labels) < len(labels):
                num += auc(labels, [r[column] for r in rows]) * len(rows)
                den += len(rows)
        return num / den

    assert gauc(1) - gauc(2) >= 0.05
    live_days = {u: len({(t - start) // 86_400 for t in ts}) for u, ts in _user_ts(data, cut, start).items()}
    assert np.median(list(live_days.values())) >= 0.7 * (DRIFT["days"] - cut)
    assert DRIFT["profile_noise"] == 1.0 and DRIFT["exposure_bias"] == 0.0
    ages = {e["user_id"]: e["profile"]["age"] for e in data.events}
    profiles_by_group: dict[int, Counter[str]] = defaultdict(Counter)
    for user, age in ages.items():
        profiles_by_group[data.groups[user]][age] += 1
    shares = [max(c.values()) / sum(c.values()) for c in profiles_by_group.values()]
    assert max(shares) < 0.5  # ages drawn uniformly (0.2 each): no group has the modal age it has by default


def _user_ts(data: Dataset, cut: int, start: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for e in data.events:
        if (e["ts"] - start) // 86_400 >= cut:
            out[e["user_id"]].append(e["ts"])
    return out


def test_unknown_dataset_name() -> None:
    with pytest.raises(ValueError, match="movielens-100k"):
        load_dataset("nope")


# --- JSON Lines --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_jsonl_round_trip(tmp_path: Path, name: str) -> None:
    events = load_dataset("synthetic", n_users=20, seed=5).events
    path = tmp_path / name
    assert write_events_jsonl(path, events) == len(events)
    assert list(read_events_jsonl(path)) == events
    assert not list(tmp_path.glob("*.tmp"))


def test_jsonl_bad_line_names_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"user_id": "a"})
    path.write_text(f"{good}\n\n{good}\n{{not json\n{good}\n", encoding="utf-8")
    reader = read_events_jsonl(path)
    assert next(reader) == {"user_id": "a"} and next(reader) == {"user_id": "a"}
    with pytest.raises(EventFileError, match=r"bad\.jsonl:4: invalid JSON"):
        next(reader)


def test_jsonl_rejects_non_object(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(EventFileError, match=":1: expected a JSON object"):
        list(read_events_jsonl(path))


# --- MovieLens-100k ----------------------------------------------------------------------


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CODA_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "coda"


def test_movielens_without_download_raises_clearly(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match=re.escape("pip download --no-deps recbole==1.2.1")):
        load_dataset("movielens-100k", tmp_path, download=False)


def test_movielens_rejects_corrupt_cached_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "wheels" / "recbole-1.2.1-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"not the wheel")
    with pytest.raises(DatasetUnavailable, match="Delete it"):
        load_dataset("movielens-100k", tmp_path)


def test_movielens_failed_download_raises_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for recbole==1.2.1"
        )

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(DatasetUnavailable, match=r"No matching distribution.*copy recbole-1\.2\.1"):
        load_dataset("movielens-100k", tmp_path)


def test_movielens_refuses_wrong_downloaded_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_refuses_tampered_download("movielens-100k", movielens_module.WHEEL_NAME, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def movielens() -> Dataset:
    return cached_or_skip("movielens-100k")


def test_movielens_events(movielens: Dataset) -> None:
    events = movielens.events
    assert len(events) == 100_000
    assert len({e["user_id"] for e in events}) == 943
    assert len({e["item_id"] for e in events}) == 1682
    _assert_schema(events)
    share = sum(e["label"] for e in events) / len(events)
    assert 0.5 < share < 0.6  # 55,375 ratings are >= 4
    genres = Counter(t for e in events for t in e["item_tags"])
    assert {"Drama", "Comedy", "Action", "Children's", "Sci-Fi"} <= set(genres)
    assert all(e["item_tags"] for e in events)
    assert {k for e in events for k in e["profile"]} == {"age", "gender", "occupation"}
    assert movielens.groups is None
    assert movielens.meta["wheel_sha256"] and movielens.meta["n_users"] == 943


def test_movielens_second_load_uses_cache(movielens: Dataset) -> None:
    cache = Path(os.environ.get("CODA_CACHE_DIR") or default_cache_dir())
    again = load_dataset("movielens-100k", cache)
    assert "(cache)" in again.meta["source"]
    assert again.events == movielens.events
