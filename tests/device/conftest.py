"""Fixtures for the device tests: synthetic samples and behaviour events (see samplegen.py)."""

from __future__ import annotations

import pytest
from samplegen import EventMaker, SampleMaker, make_events, make_samples


@pytest.fixture
def samples() -> SampleMaker:
    return make_samples


@pytest.fixture
def events() -> EventMaker:
    return make_events
