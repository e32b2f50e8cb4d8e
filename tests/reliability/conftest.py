"""Reliability fixtures: one clean reference run shared by the fuzz, crash and privacy tests."""

from __future__ import annotations

import pytest
from relhelp import PULL_BATCHES, Reference, canary_events, namespace

from ops.audit.exports import collect
from ops.chaos.run import ChaosRun
from ops.replay.publish import plan_days
from streams.topics import load_topics


@pytest.fixture(scope="session")
async def reference(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Replay the canary plans once through a real worker with nothing injected."""
    settings = namespace(broker, tmp_path_factory.mktemp("reference"), "ref")
    topics = load_topics(prefix=settings.topic_prefix)
    events = canary_events()
    plans = plan_days(events)
    stats = await ChaosRun(settings, topics, pull_batches=PULL_BATCHES).run(plans)
    return Reference(settings, topics, plans, events, await collect(settings, topics), stats)
