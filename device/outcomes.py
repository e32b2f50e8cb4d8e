"""What a device message did: messages to send up, a refusal, and what training did."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.schemas import Record


class Rejected(Exception):
    """A down-tunnel message the device refuses; `reason` is the dead-letter reason code."""

    def __init__(self, device: str, reason: str, detail: str) -> None:
        super().__init__(f"device {device}: {reason}: {detail}")
        self.device = device
        self.reason = reason
        self.detail = detail


@dataclass
class TrainOutcome:
    skipped: str = ""  # "", "no_validation", "nothing_to_train"
    n_train: int = 0
    n_valid: int = 0
    accepted_steps: int = 0
    total_steps: int = 0
    valid_before: float | None = None
    valid_after: float | None = None
    version: str = ""
    kept: bool = False


@dataclass
class Outcome:
    """What a message did: messages to send up, and what happened on the way."""

    up: list[Record] = field(default_factory=list)
    rejected: Rejected | None = None
    duplicate: bool = False
    samples: int = 0  # local samples added / outside samples stored
    filtered: int = 0  # kept by the filter in this call
    trained: TrainOutcome | None = None
