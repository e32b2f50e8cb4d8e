"""Tests for the experiment's references: they score exactly the arms' events, and perfect matching pays."""

from __future__ import annotations

import json
from dataclasses import replace

from ops.experiment import abtest
from ops.experiment.references import REFERENCE_SEED, Recipe, reference_rows
from ops.experiment.runner import Params, prepare
from ops.experiment.tuning import global_rows
from streams.settings import Settings

SLICE = Params(dataset="synthetic", scenario="drift", seeds=(0,), k=10, history_share=0.5,
               synthetic={"n_users": 90, "n_groups": 3, "heterogeneity": 0.9, "days": 8, "change_days": (2, 4),
                          "events_per_day": (5, 10), "activity": (8.0, 1.5), "exposure_bias": 0.0,
                          "profile_noise": 1.0})


def test_group_oracle_beats_the_stale_global_model_on_a_small_slice() -> None:
    """Drift makes M0 stale; M0 fine-tuned on true group-mates' live samples ranks the user's events
    better, the truth better still, and every reference scores every live event once."""
    split = prepare(SLICE)
    settings = SLICE.settings_for(Settings(), "references", 0)
    rows, notes = reference_rows(split, settings, SLICE.k, recipe=Recipe(epochs=3))
    baseline = global_rows(split, settings)
    assert set(notes) >= {"oracle", "own_future", "group_oracle", "recipe"}
    events = {r.sample_id for r in baseline}
    for name in ("oracle", "own_future", "group_oracle"):
        ids = [r.sample_id for r in rows if r.arm == name]
        assert sorted(ids) == sorted(events), name  # the same events, each once
    assert all(r.seed == REFERENCE_SEED for r in rows)
    gauc = {name: abtest.point_metrics(abtest.units([r for r in [*rows, *baseline] if r.arm == name], 1))["gauc"]
            for name in ("global", "oracle", "group_oracle")}
    assert gauc["oracle"] > gauc["group_oracle"] > gauc["global"] + 0.05, gauc


def test_global_scores_are_the_cloud_arms_scores() -> None:
    """M0 rescored offline is exactly what cloud-arm devices served, event by event, on a split that
    stops before the data ends (the history-only tuning split): same model, same sequences, same events."""
    from ops.experiment.offline import run_offline
    from ops.experiment.tuning import history_split

    inner = history_split(prepare(SLICE), 0.5)
    settings = SLICE.settings_for(Settings(), "references", 0)
    served = {r.sample_id: r.score for r in run_offline(inner, settings, 0).rows if r.arm == "cloud"}
    rescored = {r.sample_id: r.score for r in global_rows(inner, settings)}
    assert served and set(served) <= set(rescored)
    assert max(abs(served[k] - rescored[k]) for k in served) <= 1e-6
    live_ids = {r.sample_id for r in run_offline(inner, settings, 0).rows}
    assert set(rescored) == live_ids  # nothing past the split's last live day


def test_a_device_starts_with_the_sequence_the_cloud_would_build() -> None:
    """`Split.past`: a device's history events give the very behaviour sequence that the user's whole
    pre-cut log gives, whichever events join a sequence (all, or clicks only)."""
    from core.features import FeatureSpace, History, event_to_sample

    split = prepare(SLICE)
    for actions in ("all", "clicks"):
        space = FeatureSpace(seq_len=8, sequence_actions=actions)
        whole: dict[str, History] = {}
        for e in sorted(split.events, key=lambda e: (e["ts"], e["user_id"], e["item_id"], e["action"])):
            if e["ts"] < split.cut_day * 86_400:
                whole[e["user_id"]] = event_to_sample(e["user_id"], e, whole.get(e["user_id"], History()), space)[1]
        past = split.past(space)
        assert past and all(len(events) <= space.seq_len for _, events in past)
        for _, events in past:
            history = History()
            for ev in events:
                fields = {"ts": ev.ts, "item_id": ev.item_id, "item_tags": ev.item_tags, "action": ev.action,
                          "label": ev.label}
                history = event_to_sample(ev.user_id, fields, history, space)[1]
            assert history.items == whole[events[0].user_id].items and len(history.items) == len(events)
        if actions == "clicks":
            assert all(ev.label == 1 or ev.action == "click" for _, events in past for ev in events)


def test_the_run_records_the_settings_it_used_with_the_recipe_and_overrides() -> None:
    """results.json's `settings`: the recipe's choices, σ, and what the environment changed (the centroid)."""
    root = Settings(classifier_model="centroid", seq_len=12)
    recorded = replace(SLICE, recipe="tuned", sigma=0.75).recorded_settings(root)
    assert set(recorded) == {"matching", "device"}
    assert recorded["device"]["classifier_model"] == "centroid" and recorded["device"]["sigma"] == 0.75
    assert recorded["device"]["train_patience"] == 2 and recorded["matching"]["sequence_actions"] == "clicks"
    assert recorded["matching"]["seq_len"] == 12 and recorded["matching"]["k_neighbours"] == SLICE.k
    json.dumps(recorded)  # goes into results.json as it is
