"""MovieLens-100k as CTR behaviour events, read from the checksum-pinned RecBole 1.2.1 wheel."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.sample import DAY
from ops.datasets import Dataset, DatasetUnavailable, device_id_for

__all__ = ["AGE_BUCKETS", "FILE_SHA256", "WHEEL_SHA256", "age_bucket", "load_movielens_100k"]

logger = logging.getLogger(__name__)

NAME = "movielens-100k"
RECBOLE_VERSION = "1.2.1"
WHEEL_NAME = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
# Pinned once from `pip download --no-deps recbole==1.2.1` (PyPI); any other bytes are refused.
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
FILE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
CACHE_VERSION = 1  # bump when the cached layout or the parsing changes
DOWNLOAD_TIMEOUT_S = 300.0

# The age ranges MovieLens-1M uses; keeps the raw age (a personal value) out of events.
AGE_BUCKETS: tuple[tuple[int, str], ...] = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
)
AGE_TOP = "56+"


@dataclass
class _Parsed:
    """Columnar MovieLens: index arrays into the user and item tables, sorted in event order."""

    user_ids: list[str]
    profiles: list[dict[str, str]]
    item_ids: list[str]
    item_tags: list[list[str]]
    titles: list[str]
    years: list[str]
    user: np.ndarray  # int32 index into user_ids
    item: np.ndarray  # int32 index into item_ids
    ts: np.ndarray  # int64 unix seconds
    rating: np.ndarray  # int8, 1..5


def age_bucket(age: int) -> str:
    for upper, label in AGE_BUCKETS:
        if age < upper:
            return label
    return AGE_TOP


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(wheels_dir: Path, timeout_s: float) -> Path:
    """pip-download the wheel into a temp dir and move it into place only once verified."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    target = wheels_dir / WHEEL_NAME
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--timeout", "60", "--retries", "2",
        f"recbole=={RECBOLE_VERSION}",
    ]  # fmt: skip
    logger.info("downloading %s with pip (not cached in %s)", WHEEL_NAME, wheels_dir)
    with tempfile.TemporaryDirectory(dir=wheels_dir, prefix=".partial-") as tmp:
        try:
            proc = subprocess.run(
                [*cmd, "-d", tmp], capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetUnavailable(_manual_hint(f"pip download failed: {exc}", target)) from exc
        fetched = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not fetched.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            reason = f"pip download exited {proc.returncode}: {' | '.join(tail) or 'no output'}"
            raise DatasetUnavailable(_manual_hint(reason, target))
        actual = _sha256_file(fetched)
        if actual != WHEEL_SHA256:
            raise DatasetUnavailable(
                f"downloaded {WHEEL_NAME} has sha256 {actual}, expected {WHEEL_SHA256}; "
                "refusing it (the index served different bytes). Check the package index, or place "
                f"the genuine wheel at {target}."
            )
        os.replace(fetched, target)
    return target


def _manual_hint(reason: str, target: Path) -> str:
    return (
        f"MovieLens-100k unavailable ({reason}). It ships inside the PyPI wheel recbole=={RECBOLE_VERSION}: "
        f"run `python -m pip download --no-deps recbole=={RECBOLE_VERSION} -d {target.parent}` where PyPI "
        f"is reachable, or copy {WHEEL_NAME} (sha256 {WHEEL_SHA256}) to {target}."
    )


def _ensure_wheel(cache_dir: Path, download: bool, timeout_s: float) -> Path:
    target = cache_dir / "wheels" / WHEEL_NAME
    if target.is_file():
        actual = _sha256_file(target)
        if actual != WHEEL_SHA256:
            raise DatasetUnavailable(
                f"cached {target} has sha256 {actual}, expected {WHEEL_SHA256}; it is corrupt or a "
                "different build. Delete it and load again to re-download."
            )
        return target
    if not download:
        raise DatasetUnavailable(_manual_hint("not cached and download=False", target))
    return _download_wheel(target.parent, timeout_s)


def _read_members(wheel: Path) -> dict[str, str]:
    """Read and checksum the three atomic files straight from the wheel zip (no install)."""
    texts: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as zf:
        for name, expected in FILE_SHA256.items():
            data = zf.read(MEMBER_DIR + name)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise DatasetUnavailable(
                    f"{MEMBER_DIR}{name} in {wheel} has sha256 {actual}, expected {expected}; "
                    "delete the wheel and load again."
                )
            texts[name] = data.decode("utf-8")
    return texts


def _atomic_rows(text: str) -> tuple[dict[str, int], list[list[str]]]:
    """RecBole atomic file: tab-separated, header `name:type`; returns column index by name and rows."""
    lines = text.splitlines()
    columns = {field.split(":", 1)[0]: i for i, field in enumerate(lines[0].split("\t"))}
    width = len(columns)
    rows = [line.split("\t") for line in lines[1:] if line]
    bad = next((n for n, row in enumerate(rows, start=2) if len(row) != width), None)
    if bad is not None:
        raise DatasetUnavailable(f"malformed atomic file at line {bad}: expected {width} columns")
    return columns, rows


def _parse(texts: dict[str, str]) -> _Parsed:
    ucol, urows = _atomic_rows(texts["ml-100k.user"])
    icol, irows = _atomic_rows(texts["ml-100k.item"])
    rcol, rrows = _atomic_rows(texts["ml-100k.inter"])

    urows.sort(key=lambda r: int(r[ucol["user_id"]]))
    user_ids = [r[ucol["user_id"]] for r in urows]
    profiles = [
        {  # zip code dropped: too identifying and useless as a feature here
            "age": age_bucket(int(r[ucol["age"]])),
            "gender": r[ucol["gender"]],
            "occupation": r[ucol["occupation"]],
        }
        for r in urows
    ]
    irows.sort(key=lambda r: int(r[icol["item_id"]]))
    item_ids = [r[icol["item_id"]] for r in irows]
    item_tags = [r[icol["class"]].split() for r in irows]

    uidx = {u: n for n, u in enumerate(user_ids)}
    iidx = {i: n for n, i in enumerate(item_ids)}
    user = np.fromiter((uidx[r[rcol["user_id"]]] for r in rrows), np.int32, len(rrows))
    item = np.fromiter((iidx[r[rcol["item_id"]]] for r in rrows), np.int32, len(rrows))
    ts = np.fromiter((int(float(r[rcol["timestamp"]])) for r in rrows), np.int64, len(rrows))
    rating = np.fromiter((int(float(r[rcol["rating"]])) for r in rrows), np.int8, len(rrows))

    # Event order compares ids as strings, so rank them lexicographically before lexsort.
    urank = np.argsort(np.argsort(np.array(user_ids)))
    irank = np.argsort(np.argsort(np.array(item_ids)))
    order = np.lexsort((irank[item], urank[user], ts))
    return _Parsed(
        user_ids, profiles, item_ids, item_tags,
        [r[icol["movie_title"]] for r in irows], [r[icol["release_year"]] for r in irows],
        user[order], item[order], ts[order], rating[order],
    )  # fmt: skip


def _cache_path(cache_dir: Path) -> Path:
    return cache_dir / NAME / f"ml-100k.v{CACHE_VERSION}.npz"


def _save_cache(path: Path, parsed: _Parsed) -> None:
    tables = {
        "cache_version": CACHE_VERSION,
        "wheel_sha256": WHEEL_SHA256,
        "user_ids": parsed.user_ids,
        "profiles": parsed.profiles,
        "item_ids": parsed.item_ids,
        "item_tags": parsed.item_tags,
        "titles": parsed.titles,
        "years": parsed.years,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp, tables=np.array(json.dumps(tables)), user=parsed.user, item=parsed.item,
        ts=parsed.ts, rating=parsed.rating,
    )  # fmt: skip
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache


def _load_cache(path: Path) -> _Parsed | None:
    """The cached columns, or None when absent, stale or unreadable (then we rebuild)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            tables = json.loads(str(npz["tables"]))
            if tables.get("cache_version") != CACHE_VERSION or tables.get("wheel_sha256") != WHEEL_SHA256:
                logger.info("ignoring stale cache %s", path)
                return None
            arrays = {k: npz[k] for k in ("user", "item", "ts", "rating")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable cache %s: %s", path, exc)
        return None
    return _Parsed(
        tables["user_ids"], tables["profiles"], tables["item_ids"], tables["item_tags"],
        tables["titles"], tables["years"], **arrays,
    )  # fmt: skip


def _events(parsed: _Parsed, label_threshold: int) -> list[dict[str, Any]]:
    user_ids, profiles, item_ids, tags = parsed.user_ids, parsed.profiles, parsed.item_ids, parsed.item_tags
    devices = [device_id_for(u) for u in user_ids]
    labels = (parsed.rating >= label_threshold).tolist()
    events: list[dict[str, Any]] = []
    append = events.append
    # Fresh list/dict per event: consumers may mutate an event without touching its neighbours.
    for u, i, ts, lab in zip(
        parsed.user.tolist(), parsed.item.tolist(), parsed.ts.tolist(), labels, strict=True
    ):
        append({
            "user_id": user_ids[u], "device_id": devices[u], "ts": ts, "item_id": item_ids[i],
            "item_tags": list(tags[i]), "action": "click" if lab else "impression", "label": int(lab),
            "profile": dict(profiles[u]),
        })  # fmt: skip
    return events


def _meta(parsed: _Parsed, label_threshold: int, source: str) -> dict[str, Any]:
    ts = parsed.ts
    return {
        "source": f"recbole=={RECBOLE_VERSION} wheel, {MEMBER_DIR} ({source})",
        "wheel_sha256": WHEEL_SHA256,
        "file_sha256": dict(FILE_SHA256),
        "label_rule": f"label = rating >= {label_threshold}",
        "n_events": int(ts.size),
        "n_users": len(parsed.user_ids),
        "n_items": len(parsed.item_ids),
        "positive_share": float((parsed.rating >= label_threshold).mean()),
        "ts_min": int(ts.min()),
        "ts_max": int(ts.max()),
        "span_days": float((ts.max() - ts.min()) / DAY),
        "items": {
            iid: {"title": t, "year": y, "tags": list(g)}
            for iid, t, y, g in zip(
                parsed.item_ids, parsed.titles, parsed.years, parsed.item_tags, strict=True
            )
        },
    }


def load_movielens_100k(
    cache_dir: Path,
    *,
    download: bool = True,
    label_threshold: int = 4,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Dataset:
    """MovieLens-100k as behaviour events: one per rating, label = rating >= `label_threshold`.

    Raises DatasetUnavailable when the wheel cannot be fetched (or `download` is False and it is
    not cached) or any checksum disagrees.
    """
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    cache = _cache_path(cache_dir)
    parsed = _load_cache(cache)
    source = "cache"
    if parsed is None:
        wheel = _ensure_wheel(cache_dir, download, timeout_s)
        parsed = _parse(_read_members(wheel))
        _save_cache(cache, parsed)
        source = "wheel"
    events = _events(parsed, label_threshold)
    logger.info(
        "loaded %s from %s: %d events in %.2fs", NAME, source, len(events), time.perf_counter() - started
    )
    return Dataset(name=NAME, events=events, groups=None, meta=_meta(parsed, label_threshold, source))


def clear_cache(cache_dir: Path) -> None:
    """Remove the parsed cache (the verified wheel stays)."""
    shutil.rmtree(Path(cache_dir) / NAME, ignore_errors=True)
