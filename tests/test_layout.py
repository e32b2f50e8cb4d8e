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


ARM_NAMES = frozenset({"cloud", "local", "coda", "coda_nofilter", "coda_random"})
# Report code groups and labels results by arm (u.arm == arm, baseline "cloud"): it decides nothing
# an arm does. Engines, the device included, ask the core.arms.Arm object instead.
REPORTS = frozenset({"ops/experiment/abtest.py", "ops/experiment/results.py", "ops/experiment/figures.py",
                     "ops/experiment/tuning.py", "ops/cli/cmd_experiment.py"})


def _names_an_arm(node: ast.AST) -> bool:
    """An arm name, a collection of them, or a value called `arm` (`arm`, `d.arm`, `self.arm`)."""
    if isinstance(node, ast.Constant):
        return node.value in ARM_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_an_arm(e) for e in node.elts)
    if isinstance(node, ast.Name):
        return node.id in {"arm", "PULLING"}
    return isinstance(node, ast.Attribute) and node.attr in {"arm", "PULLING"}


def _arm_comparisons(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hit = any(_names_an_arm(x) for x in (node.left, *node.comparators))
        elif isinstance(node, ast.match_case):
            values = [p.value for p in ast.walk(node.pattern) if isinstance(p, ast.MatchValue)]
            hit = any(_names_an_arm(v) for v in values)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            hit = node.func.attr in {"startswith", "endswith"} and _names_an_arm(node.func.value)
        else:  # the old set of pulling arm names, used any way at all
            hit = "PULLING" in (getattr(node, "id", None), getattr(node, "attr", None))
        if hit:
            found.append((getattr(node, "lineno", 0), ast.unparse(node)[:80]))
    return found


def test_arm_comparisons_are_the_arms_own() -> None:
    """What an arm does (pull, train, keep) is decided in core/arms.py: no arm name is compared elsewhere."""
    for package in ("agents", "device", "ops", "streams"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in REPORTS:
                continue
            found = _arm_comparisons(ast.parse(path.read_text()))
            assert not found, f"{rel} compares arm names (ask core.arms.Arm instead): {found}"


def test_the_arm_scan_sees_the_old_if_chains() -> None:
    """The scan above would have caught what the engines used to do."""
    old = 'if self.arm == "local" and active: pass\nif d.arm in PULLING: pass\nx = arm in ("coda", "coda_x")'
    assert {line for line, _ in _arm_comparisons(ast.parse(old))} == {1, 2, 3}
    assert _arm_comparisons(ast.parse('match arm:\n    case "coda_nofilter": pass'))
    assert _arm_comparisons(ast.parse('ok = self.arm.startswith("coda")'))
    assert not _arm_comparisons(ast.parse('if self.arm.pulls and s.arm_mode == "buckets": pass'))
