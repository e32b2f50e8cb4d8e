"""Write an experiment's results: DIR/results.json (with the targets), DIR/report.md and the figures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops.experiment.figures import figures
from ops.experiment.markdown import report_md
from ops.experiment.tables import targets


def write(res: Mapping[str, Any], out: Path, offline: Mapping[str, Any] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = figures(res, out)
    body = {**res, "targets": targets(res)}
    if offline:
        body["offline"] = offline
    (out / "results.json").write_text(json.dumps(body, indent=1, default=_plain))
    (out / "report.md").write_text(report_md(res, names, offline))


def _plain(x: object) -> object:
    if hasattr(x, "tolist"):
        return x.tolist()  # type: ignore[no-any-return]
    return str(x)
