"""The experiment's read-back of the devices: each device database once its fleet has stopped, and
the progressive-validation rows (evaluations.jsonl) the analysis scores."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from device.modelstore import ModelFile
from device.record import KEPT_KEY, STATE_KEY, DeviceRecord
from device.storage import DB_FILE, DeviceStore, Limits, open_database


@dataclass
class DeviceExport:
    """What an experiment reads back from one device's database after its fleet stopped."""

    pseudonym: str
    arm: str
    device_id: str
    user_id: str
    trains: int
    filters: int
    pulls: int
    evaluations: list[tuple[str, int, int, float, str]]  # (sample_id, ts, label, score, model_version)
    kept_ids: list[str] = field(default_factory=list)  # outside samples the filter kept (id prefixes)
    steps: tuple[int, int] = (0, 0)  # gated updates accepted, taken
    model_change: float = 0.0  # ‖M − M0‖ / ‖M0‖ of the model the device ended with
    valid: list[tuple[float, float]] = field(default_factory=list)  # gate metric (before, after) per training


def model_change(directory: Path) -> float:
    """How far the device's current model moved from its initial one (0 when never changed)."""
    import io

    import torch

    from core.models import relative_change
    from device.modelstore import ModelStore

    def weights(m: ModelFile) -> dict[str, torch.Tensor]:
        return torch.load(io.BytesIO(m.weights), weights_only=True)

    store = ModelStore(directory)
    current, initial = store.current(), store.initial()
    return 0.0 if current.version == initial.version else relative_change(weights(current), weights(initial))


async def read_devices(state_dir: Path) -> list[DeviceExport]:
    """Every device database under `state_dir/devices`, read once (the fleets must have stopped)."""
    out = []
    for path in sorted((state_dir / "devices").glob(f"*/*/{DB_FILE}")):
        conn = await open_database(path)
        try:
            store = DeviceStore(conn, Limits(), path.parent.name)
            st = DeviceRecord.from_plain(await store.get_state(STATE_KEY))
            kept = await store.get_state(KEPT_KEY, [])
            out.append(DeviceExport(path.parent.name, st.arm, st.device_id, st.user_id, st.trains, st.filters,
                                    st.pulls, await store.evaluations(), list(kept),
                                    (st.steps_accepted, st.steps_total), model_change(path.parent),
                                    [(b, a) for b, a in st.valid_log]))
        finally:
            await conn.close()
    return out


def write_evaluations(devices: Iterable[DeviceExport], path: Path) -> int:
    """JSON Lines (gzip if the name ends in .gz), one progressive-validation row per line, with the
    device's arm and user."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wt") if path.suffix == ".gz" else open(path, "w")) as f:
        for d in devices:
            for sample_id, ts, label, score, version in d.evaluations:
                f.write(json.dumps({"device": d.pseudonym, "arm": d.arm, "user_id": d.user_id,
                                    "sample_id": sample_id, "ts": ts, "label": label,
                                    "score": round(score, 7), "model_version": version}) + "\n")
                n += 1
    return n
