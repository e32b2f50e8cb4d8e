"""Shared bits of the broker-free handler tests: settings, samples and a plan's sends by topic."""

from __future__ import annotations

from agents.plan import Send
from core.features import History, event_to_sample
from core.sample import DAY, Sample
from streams.settings import Settings

SETTINGS = Settings()
DAY0 = 19_700  # an event-time day number (days since the epoch)


def samples_of(user: str, n: int, day: int = DAY0, start: int = 0) -> list[Sample]:
    """`n` click samples of `user` on `day`, one a minute from `start` minutes past midnight."""
    history, out = History(), []
    for i in range(start, start + n):
        fields = {"ts": day * DAY + 60 * i, "item_id": f"{user}-item-{i}", "item_tags": [f"t{i % 3}"],
                  "action": "click", "label": i % 2}
        sample, history = event_to_sample(user, fields, history, SETTINGS.features)
        out.append(sample)
    return out


def to(topic: str, sent: list[Send]) -> list[Send]:
    return [s for s in sent if s.topic == topic]
