"""Tests for tuning's history-only reading of matching and filtering: known groups, known answer, no test event read."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_references import SLICE

from ops.experiment.offline import run_offline
from ops.experiment.probes import FilterProbe
from ops.experiment.runner import prepare
from ops.experiment.tables import tune_lines
from ops.experiment.tuning import KNOWS_GROUPS, history_match_precision, history_split, known_groups, tune
from streams.settings import Settings


def test_clicked_tags_find_group_mates_where_the_behaviour_sequence_does_not() -> None:
    """On the drift slice (3 hidden groups, exposure uniform) the paper's sequence histogram matches at
    about chance (29 of 89 others share a group), the clicks vector well above it."""
    split = prepare(SLICE)
    inner = history_split(split, SLICE.history_share)
    base = SLICE.settings_for(Settings(), "tune", 0)
    sequence = history_match_precision(inner, base)
    clicks = history_match_precision(inner, base.replace(match_feature="clicks"))
    assert sequence is not None and clicks is not None
    assert 0.2 < sequence < 0.45 < clicks <= 1.0, (sequence, clicks)
    assert history_match_precision(replace(inner, groups=None), base) is None  # real data: no groups


def test_tune_table_shows_matching_per_variant() -> None:
    lift = {"gauc": {"value": 0.01, "lo": 0.0, "hi": 0.02}, "logloss": {"value": -0.01}}
    variant = {"name": "clicks", **{f"{arm}_vs_global": lift for arm in ("coda", "local", "coda_random", "coda_nofilter")},
               "match_precision_on_history": {"validation_cut": 0.5944, "test_cut": 0.5767},
               "filter_selectivity": {"coda": {"classifier": 0.5031, "classifier_by_source": 0.5113,
                                               "outcome_agreement": 0.5127, "outcome_agreement_by_source": 0.5293,
                                               "own_group_share": 0.52, "picked_share": 0.8, "picked_own_group_share": 0.55}}}
    text = "\n".join(tune_lines({"split": {"history_days": 4, "live_days": 4}, "variants": [variant], "chosen": "clicks"}))
    assert "| clicks |" in text and "0.5944 / 0.5767" in text and "0.5031, 0.5113; 0.5127, 0.5293" in text
    assert "| 0.8000; 0.5500 / 0.5200 | – |" in text  # coda − coda_random: no users in both arms
    paired = {**variant, "coda_vs_coda_random": {"users": 600, "gauc": {"value": 0.012, "lo": 0.004, "hi": 0.02}}}
    assert "| +0.0120 [+0.0040, +0.0200] |" in "\n".join(tune_lines({"split": {"history_days": 4, "live_days": 4},
                                                                      "variants": [paired]}))
    old = {k: v for k, v in variant.items() if k not in ("match_precision_on_history", "filter_selectivity")}
    assert "| – | – |" in "\n".join(tune_lines({"split": {"history_days": 4, "live_days": 4}, "variants": [old]}))


def test_the_filter_probe_watches_without_changing_the_run() -> None:
    """The probe sees every classifier run of the arms that classify; the rows are the same with or without it."""
    split = prepare(SLICE)
    inner = history_split(split, SLICE.history_share)
    s = SLICE.settings_for(Settings(), "tune", 0).replace(match_feature="clicks", classifier_input="outcome")
    probe = FilterProbe(known_groups(split, s))
    watched = run_offline(inner, s, 0, probe=probe)
    assert watched.rows == run_offline(inner, s, 0).rows
    out = probe.summary()
    assert set(out) == {"coda", "coda_random"}  # coda_nofilter keeps all without a classifier
    for arm in out.values():
        assert arm["runs"] > 0 and arm["scored"] > 0 and 0.0 < arm["own_group_share"] < 1.0
        assert all(0.0 <= arm[k] <= 1.0 for k in ("classifier", "classifier_by_source", "outcome_agreement"))


def test_a_filter_that_knows_the_groups_selects_perfectly_and_is_never_chosen() -> None:
    """The ceiling variant: coda keeps exactly the matched samples of the user's own group; tuning
    records it but chooses among the recipes only; real data (no groups) refuses it."""
    split = prepare(SLICE)
    inner = history_split(split, SLICE.history_share)
    s = SLICE.settings_for(Settings(), "tune", 0).replace(match_feature="clicks", sigma=0.5)
    probe = FilterProbe(known_groups(split, s), decides=True)
    run_offline(inner, s, 0, probe=probe)
    out = probe.summary()["coda"]
    assert out["runs"] > 0 and out["classifier"] == 1.0 and 0.0 < out["own_group_share"] < 1.0
    say: list[str] = []
    ceiling = ("ceiling", {"match_feature": "clicks", "sigma": 0.5, KNOWS_GROUPS: True})
    one_day = replace(SLICE, seeds=(0,))
    result = tune(Settings(), split, one_day, say.append, [("clicks", {"match_feature": "clicks"}), ceiling])
    assert [v["name"] for v in result["variants"]] == ["clicks", "ceiling"] and result["chosen"] == "clicks"
    assert result["variants"][1]["coda_vs_coda_random"] == {"users": 0}  # one seed: one arm a user
    with pytest.raises(ValueError, match="reads hidden groups"):
        tune(Settings(), replace(split, groups=None), one_day, say.append, [ceiling])
