"""The `coda` command: one argparse app, one module per command group (cmd_<command>.py beside this file).

`coda` (pyproject's console script) and `python -m ops.cli` (__main__.py) both call `main`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from streams.settings import Settings

# command name -> module that defines `add_arguments(parser)` and `run(args, settings) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("ops.cli.cmd_stack", "start/inspect/stop the embedded broker and create topics"),
    "config": ("ops.cli.cmd_config", "print the effective settings and their environment variables"),
    "worker": ("ops.cli.cmd_worker", "run a cloud worker (ingest, user vectors, match, assemble agents)"),
    "fleet": ("ops.cli.cmd_fleet", "run a device fleet process hosting virtual devices"),
    "cloud": ("ops.cli.cmd_cloud", "cloud jobs: train-global"),
    "demo": ("ops.cli.cmd_demo", "the main job: stack, workers, fleet, a dataset replayed, exports"),
    "replay": ("ops.cli.cmd_replay", "publish a dataset, events file or topic range into a namespace"),
    "experiment": ("ops.cli.cmd_experiment", "the paper's arms and controls through the real pipeline"),
    "bench": ("ops.cli.cmd_bench", "benchmarks that write JSON beside their ceilings"),
    "chaos": ("ops.cli.cmd_chaos", "soak run: bad input, crashes and restarts"),
    "validate": ("ops.cli.cmd_validate", "check a behaviour-event file against the input contract (publishes nothing)"),
    "clean": ("ops.cli.cmd_clean", "remove the state of finished namespaces (no live process uses them)"),
}

NO_KEY = frozenset({"config", "validate", "stack", "clean"})  # commands that never pseudonymize
REPRODUCIBLE = frozenset({"experiment", "bench"})  # public datasets: the same pseudonyms (arm split) everywhere


class Parser(argparse.ArgumentParser):
    """Every parser and sub-parser shows its options' defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """An option declared without help still shows its default."""
        if kwargs.get("help") is None and kwargs.get("default") is not None:
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)


GLOBAL_VALUES = ("--state-dir", "--bootstrap", "--prefix")  # global options that take a value


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command named on the line, found without importing any command module."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in GLOBAL_VALUES:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The app; only `command`'s module is imported (so `coda --help` never loads torch)."""
    parser = Parser(prog="coda", description="CoDA on a real stream (arXiv 2201.10382)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--state-dir", help="state directory (env CODA_STATE_DIR, default .coda)")
    parser.add_argument("--bootstrap", help="external Kafka bootstrap servers (env CODA_BOOTSTRAP)")
    parser.add_argument("--prefix", dest="topic_prefix", help="topic namespace prefix (env CODA_TOPIC_PREFIX)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(handler=module.run)
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("coda-streams")
    except PackageNotFoundError:
        return "unknown (not installed)"


def configure_logging(settings: Settings, verbose: int) -> None:
    from streams.logs import configure

    configure([settings.log_level.upper(), "INFO", "DEBUG"][min(verbose, 2)])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("state_dir", "bootstrap", "topic_prefix")}
    if overrides["state_dir"]:
        from pathlib import Path

        overrides["state_dir"] = Path(overrides["state_dir"])
    try:
        settings = Settings.from_env(**overrides)
        if args.command not in NO_KEY:
            from ops.stack.keys import resolve_pseudonym_key

            settings = resolve_pseudonym_key(settings, reproducible=args.command in REPRODUCIBLE)
    except ValueError as exc:
        parser.exit(2, f"coda: error: {exc}\n")
    configure_logging(settings, args.verbose)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"coda {args.command}: error: {exc}", file=sys.stderr)
        return 1

