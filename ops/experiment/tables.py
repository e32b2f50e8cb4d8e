"""report.md's tables and the known-answer targets: per-arm and lift tables, targets, headroom, funnel,
schedules, sweeps and tuning, with the number formats they share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.arms import ARMS
from ops.experiment.results import VALID_NOTE


def _ci(m: Mapping[str, Any] | None, digits: int = 4, pct: bool = False) -> str:
    if not m or m.get("value") is None:
        return "–"
    f = (lambda x: f"{100 * x:+.{max(0, digits - 2)}f}%") if pct else (lambda x: f"{x:.{digits}f}")  # noqa: E731
    lo, hi = m.get("lo"), m.get("hi")
    return f"{f(m['value'])} [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else f(m["value"])


def _signed(m: Mapping[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    if m.get("relative"):
        return _ci(m, 4, pct=True)
    return f"{m['value']:+.4f} [{m['lo']:+.4f}, {m['hi']:+.4f}]" if m.get("lo") is not None else f"{m['value']:+.4f}"


def _row(cells: Iterable[object]) -> str:
    return f"| {' | '.join(str(c) for c in cells)} |"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table: header, rule, one line per row (cells as str() writes them)."""
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)]


# --------------------------------------------------------------------------- targets, headroom, funnel, schedules
def targets(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The known-answer experiment's targets, each met / missed (None: not measurable here) with its figure.

    The verdict reads plain GAUC, as the targets are set. Each GAUC target also carries its reading
    on GAUC per user-day (`met_user_day`): a device serves a day's ranking with one model version,
    while a user's AUC over all live days also ranks scores of different versions against each other.
    """
    lifts = res["lifts"]
    hr = res["headroom"]
    oracle = hr.get("reference") == "oracle"

    def lift(name: str, metric: str = "gauc") -> Mapping[str, Any]:
        m = lifts.get(name, {})
        return m.get(metric, {}) if m.get("users") else {}

    def share(name: str, at_least: float, what: str) -> dict[str, Any]:
        cell = hr["shares"].get(name, {}) if oracle else {}

        def met(m: Mapping[str, Any]) -> bool | None:
            return None if m.get("value") is None else m["value"] >= at_least

        m, d = cell.get("gauc", {}), cell.get("gauc_user_day", {})
        figure = f"{_ci(m, 3)}; per user-day {_ci(d, 3)}" if m else "no oracle rows"
        return _target(what, met(m), figure, met(d))

    def beats(name: str, by: float, what: str) -> dict[str, Any]:
        def met(m: Mapping[str, Any]) -> bool | None:
            return None if m.get("lo") is None else m["value"] >= by and m["lo"] > 0

        m, d = lift(name), lift(name, "gauc_user_day")
        figure = (f"{_signed({**m, 'relative': False})}; per user-day {_signed({**d, 'relative': False})}"
                  if m else "no paired users")
        return _target(what, met(m), figure, met(d))

    def ordered(metric: str) -> tuple[bool | None, list[float | None]]:
        order = [lift("local_vs_cloud", metric).get("value"), lift("coda_vs_local", metric).get("value")]
        return (None if None in order else all(v > 0 for v in order)), order  # type: ignore[operator]

    (met_order, order), (met_day, order_day) = ordered("gauc"), ordered("gauc_user_day")
    elapsed = res.get("elapsed_s")
    return [
        share("group_oracle", 0.5, "group_oracle recovers ≥ 50 % of the oracle headroom (GAUC)"),
        _target("cloud < local < CoDA in paired GAUC", met_order,
                f"local − cloud {_opt(order[0])}, CoDA − local {_opt(order[1])}; per user-day "
                f"{_opt(order_day[0])}, {_opt(order_day[1])}", met_day),
        beats("coda_vs_local", 0.02, "CoDA − local ≥ +0.02 GAUC, 95 % CI above zero"),
        beats("coda_vs_coda_random", 0.005, "CoDA − coda_random ≥ +0.005 GAUC, 95 % CI above zero"),
        share("coda", 0.3, "CoDA closes ≥ 30 % of the oracle headroom (GAUC)"),
        _target("the run finishes in ≤ 15 minutes", None if elapsed is None else elapsed <= 900,
                f"{elapsed} s" if elapsed is not None else "not timed"),
    ]


def _target(what: str, met: bool | None, figure: str, met_user_day: bool | None = None) -> dict[str, Any]:
    return {"target": what, "met": met, "figure": figure, "met_user_day": met_user_day}


_VERDICT = {True: "met", False: "missed", None: "not measurable"}


def _opt(x: float | None) -> str:
    return "–" if x is None else f"{x:+.4f}"


def _target_lines(res: Mapping[str, Any]) -> list[str]:
    out = ["## Targets of the known-answer experiment", ""]
    for t in targets(res):
        verdict = _VERDICT[t["met"]]
        day = "" if "per user-day" not in t["figure"] else f"; per user-day {_VERDICT[t['met_user_day']]}"
        out.append(f"- {t['target']}: **{verdict}**{day} ({t['figure']}).")
    out += ["", "Verdicts read plain GAUC, as the targets are set; the per user-day reading ranks each day's "
            "events within the one model version that served them (plain GAUC also ranks a user's events "
            "across versions, which no serving request does).", ""]
    return out


def _headroom_lines(res: Mapping[str, Any]) -> list[str]:
    hr = res["headroom"]
    refs = ", ".join(res.get("references", [])) or "none"
    out = ["## References and headroom", "",
           f"References scored on the same live events as the arms (seed −1 in the rows): {refs}. oracle = the "
           "generator's true click probabilities; own_future = each device's model fine-tuned on its own user's "
           "live events, cross-fitted (a reference, not a bound); group_oracle = the same on the live samples of "
           "the user's true group-mates (what perfect matching would give).", ""]
    recipe = res.get("reference_notes", {}).get("recipe")
    if recipe:
        out += [f"Fine-tuning recipe of own_future and group_oracle: plain mini-batch Adam, no gate ({recipe}); "
                f"computed in {res['reference_notes'].get('elapsed_s')} s.", ""]
    if hr.get("reference") is None:
        return [*out, hr["label"], ""]
    out += [f"Each row: {hr['label']}; users present in all three, ratio of means, 95% bootstrap CI over "
            "those users.", ""]
    header = ("arm / reference", "users", "share (GAUC)", "share (GAUC per user-day)", "GAUC x / cloud / reference")
    return [*out, *_table(header, (_headroom_row(name, h) for name, h in hr["shares"].items())), ""]


def _headroom_row(name: str, h: Mapping[str, Any]) -> tuple[object, ...]:
    if not h.get("users"):
        return (name, 0, "–", "–", "–")
    g = h["gauc"]
    return (name, h["users"], _ci(g, 3), _ci(h["gauc_user_day"], 3),
            f"{_num(g['arm'])} / {_num(g['cloud'])} / {_num(g['oracle'])}")


def _funnel_lines(res: Mapping[str, Any]) -> list[str]:
    f = res["funnel"]
    out = ["## Mechanism funnel", "",
           "Stage by stage: matching → what the filter keeps (against the random-subset control, coda_random) → "
           "gate acceptance → model change (‖M − M0‖ / ‖M0‖) → lift over cloud. A null sits at the first stage "
           "without signal.", ""]
    if f.get("chance") is not None:
        out += [f"Own-group shares (latent groups; chance for a random other user: {f['chance']}; the random "
                f"control's kept samples: {_opt_share(f['control_kept_own_group'])}).", ""]
        header = ("arm", "matching precision", "matched own-group", "kept own-group", "kept")
        cells: tuple[str, ...] = ("matching_precision", "matched_own_group", "kept_own_group", "kept")
    else:
        out += ["No latent groups on this data: the neighbours' agreement with the user's labels on items both "
                "have, against a random other user for each (user, neighbour) pair.", ""]
        header = ("arm", "neighbour agreement", "random agreement")
        cells = ("neighbour_agreement", "random_agreement")
    header += ("gate accepted", "model change", "ΔGAUC vs cloud", "headroom share")
    rows = [(arm, *(_opt_share(r[c]) for c in cells), _opt_share(r["accepted_share"]),
             _opt_share(r["model_change_mean"]), _signed((r["lift_vs_cloud"] or {}).get("gauc")),
             _ci(r["headroom_share"], 3)) for arm, r in f["arms"].items()]
    return [*out, *_table(header, rows), ""]


def _opt_share(x: Any) -> str:
    return "–" if x is None else str(x)


def _schedule_lines(res: Mapping[str, Any]) -> list[str]:
    header = ("arm", "schedule", "devices", "trainings per device (median)", "gated steps accepted",
              "model change mean (median)", "devices changed", "validation metric before → after")
    return ["## Schedules: when each arm trains, and what training did", "",
            f"Validation metric before → after: {VALID_NOTE}.", "",
            *_table(header, (_schedule_row(arm, m) for arm, m in res["schedules"].items())), ""]


def _schedule_row(arm: str, m: Mapping[str, Any]) -> tuple[object, ...]:
    steps = (f"{m['steps_accepted']}/{m['steps_total']} ({m['accepted_share']})" if m["steps_total"] else "–")
    change = "–" if m["model_change_mean"] is None else f"{m['model_change_mean']} ({m['model_change_median']})"
    valid = ("–" if m["valid_before_mean"] is None
             else f"{m['valid_before_mean']} → {m['valid_after_mean']} (in-sample)")
    return (arm, m["schedule"] or "–", m["devices"], f"{m['trainings_per_device']} ({m['trainings_median']})",
            steps, change, _opt_share(m["changed_share"]), valid)


def _offline_table(res: Mapping[str, Any], key: str, title: str) -> list[str]:
    header = ("arm", "users", "events", "GAUC", "GAUC per user-day", "AUC", "logloss")
    rows = [(arm, m["users"]["value"], m["events"]["value"], *(_ci(m[k]) for k in ("gauc", "gauc_user_day", "auc", "logloss")))
            for arm, m in res[key].items()]
    return [f"## {title}", "", *_table(header, rows), ""]


def _online_table(res: Mapping[str, Any]) -> list[str]:
    n = res["params"]["top_n"]
    header = ("arm", "click rate of top-ranked", "clicks per user-day", "share of user-days with a click")
    rows = [(arm, *(_ci(m[k]) for k in ("ctr_top", "clicks_per_user_day", "share_clicking")))
            for arm, m in res["arms"].items()]
    return [f"## Table 4 analogue — online metrics per arm (each user's top-{n} scored items of a day)", "",
            *_table(header, rows), ""]


# The paired lifts a lift table shows, in column order.
_LIFT_METRICS = ("gauc", "gauc_user_day", "auc", "logloss", "ctr_top", "clicks_per_user_day", "share_clicking")


def _lift_table(res: Mapping[str, Any], key: str, title: str) -> list[str]:
    header = ("comparison", "users", "ΔGAUC", "ΔGAUC per user-day", "ΔAUC", "Δlogloss", "click rate top-ranked",
              "clicks per user-day", "share clicking")
    rows = [(name, lift["users"], *(_signed(lift[k]) for k in _LIFT_METRICS)) if lift.get("users")
            else (name, 0, *("–" for _ in _LIFT_METRICS)) for name, lift in res[key].items()]
    return [f"## {title}", "", "Differences for GAUC/AUC/logloss (lower logloss is better), relative lifts for the "
            "online rates; 95% bootstrap CI over paired users.", "", *_table(header, rows), ""]


def _seed_table(res: Mapping[str, Any]) -> list[str]:
    metrics = ("gauc", "gauc_user_day", "auc", "logloss")
    per_seed = [(arm, *(", ".join(_num(v) for v in res["per_seed"][arm][k]) for k in metrics)) for arm in ARMS]
    lifts = [(name, *(_mean_ci(ms[k]) for k in metrics)) for name, ms in res["per_seed_lifts"].items()]
    return ["## Per seed (each seed alone is a bucket test on disjoint users)", "",
            *_table(("arm", "GAUC per seed", "GAUC per user-day", "AUC per seed", "logloss per seed"), per_seed), "",
            *_table(("comparison", "ΔGAUC mean [t-CI] over seeds", "ΔGAUC per user-day", "ΔAUC", "Δlogloss"), lifts),
            ""]


def _mean_ci(t: Mapping[str, Any]) -> str:
    """A mean over seeds with its t-interval, where there is one."""
    if t["mean"] is None:
        return "–"
    return f"{t['mean']:+.4f}" + (f" [{t['lo']:+.4f}, {t['hi']:+.4f}]" if t["lo"] is not None else "")


def _device_table(res: Mapping[str, Any]) -> list[str]:
    header = ("arm", "devices", "trainings per device", "outside samples received", "kept", "kept share")
    rows = [(arm, m["devices"], m["trains_per_device"], m["received"], m["kept"], _opt_share(m["kept_share"]))
            for arm, m in res["devices"].items()]
    return ["## Devices per arm (all seeds)", "", *_table(header, rows), ""]


def _sweep_lines(sw: Mapping[str, Any]) -> list[str]:
    header = ("K", "σ", "coda GAUC", "ΔGAUC coda−cloud", "ΔGAUC coda−local", "Δlogloss coda−cloud")
    rows = [(c["k"], c["sigma"], _num(c["coda"]["gauc"]), _signed(c["coda_vs_cloud"].get("gauc")),
             _signed(c["coda_vs_local"].get("gauc")), _signed(c["coda_vs_cloud"].get("logloss"))) for c in sw["grid"]]
    return ["## Sweep over K and σ (offline engine, same split and seeds)", "", *_table(header, rows), ""]


def tune_lines(tu: Mapping[str, Any]) -> list[str]:
    sp = tu["split"]
    header = ("variant", "ΔGAUC coda−M0", "ΔGAUC local−M0", "ΔGAUC coda_random−M0", "ΔGAUC coda_nofilter−M0",
              "Δlogloss coda−M0", "own-group neighbours, validation / test cut",
              "coda's filter, own-group AUC: classifier, by source; naive Bayes, by source",
              "coda's filter keeps: share of scored; own group among kept / among scored",
              "ΔGAUC coda−coda_random, users in both")
    rows = [(v["name"], *(_signed(v[f"{arm}_vs_global"].get("gauc"))
                          for arm in ("coda", "local", "coda_random", "coda_nofilter")),
             _signed(v["coda_vs_global"].get("logloss")), _precision(v.get("match_precision_on_history")),
             _selectivity((v.get("filter_selectivity") or {}).get("coda")),
             _picked((v.get("filter_selectivity") or {}).get("coda")),
             _signed((v.get("coda_vs_coda_random") or {}).get("gauc")))
            for v in tu["variants"]]
    return ["## Tuning within the method, on the history only", "",
            f"Variants scored on a validation experiment cut from the history days ({sp['history_days']} pool days, "
            f"{sp['live_days']} validation days, all before the test period; offline engine). Each arm is paired "
            "with the global model M0 on the same users and events. Own-group neighbours: the share of "
            "each user's KNN neighbours from the same hidden group, user vectors from the history days only, "
            "at the validation cut and at the test cut (synthetic data). The filter's own-group AUC: how well "
            "the coda arm's classifier scores on the validation days tell matched samples of the user's own "
            "group from the rest, sample by sample and averaged over each source user's samples in a run, beside "
            "a per-tag naive-Bayes reading of the same outcomes (0.5: the scores do not know the source); what the "
            "filter keeps (coda_random draws as many at random) and the own-group share among them against all scored. "
            f"Chosen (best ΔGAUC coda − M0): **{tu.get('chosen')}**.", "", *_table(header, rows), ""]


def _precision(p: Mapping[str, Any] | None) -> str:
    if not p:
        return "–"
    return f"{_num(p.get('validation_cut'))} / {_num(p.get('test_cut'))}"


def _selectivity(f: Mapping[str, Any] | None) -> str:
    if not f:
        return "–"
    return (f"{_num(f.get('classifier'))}, {_num(f.get('classifier_by_source'))}; "
            f"{_num(f.get('outcome_agreement'))}, {_num(f.get('outcome_agreement_by_source'))}")


def _picked(f: Mapping[str, Any] | None) -> str:
    if not f or f.get("picked_share") is None:  # runs before the probe counted what the filter keeps
        return "–"
    return f"{_num(f['picked_share'])}; {_num(f.get('picked_own_group_share'))} / {_num(f.get('own_group_share'))}"


def _offline_agreement(off: Mapping[str, Any]) -> list[str]:
    header = ("arm", "events stream / offline", "GAUC stream / offline", "logloss stream / offline")
    rows = [(arm, f"{a['events_stream']} / {a['events_offline']}", f"{_num(a['gauc_stream'])} / {_num(a['gauc_offline'])}",
             f"{_num(a['logloss_stream'])} / {_num(a['logloss_offline'])}") for arm, a in off["agreement"].items()]
    return ["## Offline reference (batch, same split, same seeds)", "", *_table(header, rows), "",
            f"Largest score difference on a shared event: {off.get('max_score_diff')}; "
            f"events scored identically (|Δ| ≤ 1e-6): {off.get('identical_share')}.", ""]


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"
