"""Architecture guards: the pure core imports no I/O library; shared constants have one home."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"faust", "aiokafka", "kafka", "qdrant_client", "qdrant_edge", "sqlite3", "aiosqlite",
             "socket", "subprocess", "streams", "agents", "device", "ops", "mode"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_is_pure() -> None:
    """core/ never imports Kafka, Faust, Qdrant, SQLite, sockets or the shell packages."""
    for path in (ROOT / "core").rglob("*.py"):
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


SHARED_CONSTANTS = {"DAY": "core/sample.py", "SAMPLE_ACTIONS": "core/sample.py"}


def test_shared_constants_are_defined_once() -> None:
    """A day's length and the actions that become samples have one home; everything else imports them."""
    for package in ("core", "streams", "agents", "device", "ops"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                for t in targets:
                    home = SHARED_CONSTANTS.get(getattr(t, "id", ""))
                    rel = path.relative_to(ROOT).as_posix()
                    assert home is None or rel == home, f"{rel} defines {t.id}: import it from {home}"  # type: ignore[attr-defined]
