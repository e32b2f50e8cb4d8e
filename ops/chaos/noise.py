"""Redelivery noise (valid, must change nothing): exact, shuffled and late duplicates of envelopes, the
same events from an unknown device, redelivered pull requests and pulls of unknown devices."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from ops.chaos.inputs import Injected
from ops.replay.publish import DAY, DayPlan
from streams.schemas import (
    PullRequest,
    UpEnvelope,
    encode,
)

log = logging.getLogger(__name__)


NOISE_KINDS = ("duplicate", "shuffled_duplicate", "late_duplicate", "unknown_device")
# "unknown_device" re-reports a user's events from another device, so from another `up` partition.
# Ingest keeps each user's history in a table keyed by user but fed from the device-keyed stream:
# one worker that never restarts handles that, but a restart (table recovery replays the
# changelog partition by partition) or a second worker can then see a stale history. Soaks
# with kills leave it out unless asked (`coda chaos --multi-device`); see ops/cli/cmd_chaos.py.
SINGLE_DEVICE_NOISE = NOISE_KINDS[:3]


def duplicates(plan: DayPlan, earlier: Sequence[DayPlan], rng: random.Random, n: int,
               kinds: Sequence[str] = NOISE_KINDS) -> list[Injected]:
    """Valid envelopes that add nothing: exact, shuffled, late (earlier days) and unknown-device copies."""
    out: list[Injected] = []
    pool = list(plan.by_device)
    old = [pair for p in earlier for pair in p.by_device]
    for i in range(n):
        category = rng.choice(list(kinds))
        device, events = rng.choice(old) if category == "late_duplicate" and old else rng.choice(pool)
        evs = list(events)
        if category != "duplicate":
            rng.shuffle(evs)
        if category == "unknown_device":
            device = f"ghost-device-{plan.day}-{i}"
        env = UpEnvelope(device, evs, evs[-1].ts if category == "duplicate" else rng.randrange(2**31))
        out.append(Injected(device.encode(), encode(env), category, None))
    return out


def ghost_pulls(day: int, n: int) -> list[Injected]:
    """Pull requests of devices and users the cloud never saw: answered with an 'exhausted' notice."""
    out = []
    for i in range(n):
        pull = PullRequest(f"ghost-device-{day}-{i}", f"ghost-user-{day}-{i}", day * DAY + DAY - 1,
                           f"ghost-pull-{day}-{i}", 12)
        out.append(Injected(pull.device_id.encode(), encode(pull), "unknown_device_pull", None))
    return out
