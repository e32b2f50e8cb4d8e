"""Dataset registry and JSON Lines I/O for behaviour events (the project's input schema)."""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

__all__ = [
    "Dataset",
    "DatasetUnavailable",
    "EventFileError",
    "dataset_names",
    "default_cache_dir",
    "device_id_for",
    "load_dataset",
    "read_events_jsonl",
    "sort_key",
    "write_events_jsonl",
]

logger = logging.getLogger(__name__)


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be obtained or failed verification; the message says what to do."""


class EventFileError(ValueError):
    """A JSON Lines event file has a malformed line; the message names the file and line."""


@dataclass
class Dataset:
    """Behaviour events (sorted by ts, user_id, item_id) plus what is known about them."""

    name: str
    events: list[dict[str, Any]]
    groups: dict[str, int] | None = None  # latent group per user_id, when the generator knows it
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)


def device_id_for(user_id: str) -> str:
    """One device per user, derived deterministically so every dataset agrees."""
    return f"dev-{user_id}"


def sort_key(event: dict[str, Any]) -> tuple[int, str, str]:
    """The documented event order: (ts, user_id, item_id)."""
    return (event["ts"], event["user_id"], event["item_id"])


def default_cache_dir() -> Path:
    """$CODA_CACHE_DIR if set, else ~/.cache/coda."""
    env = os.environ.get("CODA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coda"


def _load_movielens(cache_dir: Path, **options: Any) -> Dataset:
    from ops.datasets.movielens import load_movielens_100k  # lazy: keeps imports light

    return load_movielens_100k(cache_dir, **options)


def _load_instacart(cache_dir: Path, **options: Any) -> Dataset:
    from ops.datasets.instacart import load_instacart  # lazy: keeps imports light

    return load_instacart(cache_dir, **options)


def _load_synthetic(cache_dir: Path, **options: Any) -> Dataset:
    from ops.datasets.synthetic import generate  # lazy: keeps imports light

    del cache_dir  # generated in memory; nothing to cache
    return generate(**options)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "instacart": _load_instacart,
    "movielens-100k": _load_movielens,
    "synthetic": _load_synthetic,
}


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, cache_dir: Path | str | None = None, **options: Any) -> Dataset:
    """Load a dataset by name; `options` go to its loader (see the loader's signature)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}") from None
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return loader(root, **options)


def _open_text(path: Path, mode: str, gz: bool) -> IO[str]:
    # .gz is transparent so large replays can stay compressed on disk.
    if gz:
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def read_events_jsonl(path: Path | str) -> Iterator[dict[str, Any]]:
    """Yield one event dict per non-blank line; malformed lines raise EventFileError with the line number."""
    path = Path(path)
    with _open_text(path, "r", path.suffix == ".gz") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EventFileError(
                    f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
                ) from exc
            if not isinstance(event, dict):
                raise EventFileError(f"{path}:{lineno}: expected a JSON object, got {type(event).__name__}")
            yield event


def write_events_jsonl(path: Path | str, events: Iterable[dict[str, Any]]) -> int:
    """Write events as JSON Lines (atomically via a temp file); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with _open_text(tmp, "w", path.suffix == ".gz") as fh:
            for event in events:
                fh.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
                fh.write("\n")
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    os.replace(tmp, path)
    logger.debug("wrote %d events to %s", count, path)
    return count
