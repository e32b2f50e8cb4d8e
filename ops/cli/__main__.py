"""`python -m ops.cli`: the `coda` command (worker and fleet processes are spawned this way)."""

from ops.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
