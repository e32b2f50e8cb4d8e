"""`coda clean`: remove the state of finished namespaces (directories no live process uses)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", action="append", help="only this namespace (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")


def run(args: argparse.Namespace, settings: Settings) -> int:
    root = settings.state_dir / "ns"
    names = args.namespace or (sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    in_use = used_dirs()
    removed = kept = 0
    for name in names:
        path = root / name
        if not path.is_dir():
            print(f"{name}: no state at {path}")
            continue
        users = [pid for pid, d in in_use if d == path.resolve() or path.resolve() in d.parents]
        if users:
            print(f"{name}: in use by pid {', '.join(map(str, sorted(set(users))))}, kept")
            kept += 1
            continue
        print(f"{name}: {'would remove' if args.dry_run else 'removed'} {path} ({size_mb(path):.1f} MB)")
        if not args.dry_run:
            shutil.rmtree(path)
            for checkpoint in settings.state_dir.glob(f"replay-{settings.topic_prefix}-{name}-*.json"):
                checkpoint.unlink()
        removed += 1
    print(f"{removed} namespace(s) {'to remove' if args.dry_run else 'removed'}, {kept} in use")
    return 0


def used_dirs() -> list[tuple[int, Path]]:
    """(pid, state dir) of every live process of this user that runs with a CODA_STATE_DIR."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            state = proc.environ().get("CODA_STATE_DIR")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
        if state:
            out.append((proc.pid, (Path(proc.cwd()) / state).resolve()))
    return out


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
