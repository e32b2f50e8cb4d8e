"""Shared fixtures: one real embedded Tansu broker for the whole session, a topic namespace per test."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors: threads only add contention
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.stack import broker as stack
from streams.settings import Settings

_namespaces = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start Tansu from the pinned wheel (or use CODA_TEST_BOOTSTRAP) and stop it at the end."""
    external = os.environ.get("CODA_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    state_dir = tmp_path_factory.mktemp("broker")
    settings = Settings(state_dir=state_dir)
    state = stack.start_broker(settings)
    state.save(stack.stack_file(settings))
    try:
        yield state.bootstrap
    finally:
        stack.down(settings)


@pytest.fixture
def settings(broker: str, tmp_path: Path) -> Settings:
    """Settings bound to the session broker with a unique topic prefix and state dir per test."""
    prefix = f"t{os.getpid()}-{next(_namespaces)}"
    return Settings(state_dir=tmp_path / "state", bootstrap=broker, topic_prefix=prefix, app_id=prefix,
                    rebalance_timeout_s=3.0, session_timeout_s=6.0)
