"""The `coda` command: one argparse app, one module per command group."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from streams.settings import Settings

# command name -> module that defines `add_arguments(parser)` and `run(args, settings) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("ops.cmd_stack", "start/inspect/stop the embedded broker and create topics"),
    "config": ("ops.cmd_config", "print the effective settings and their environment variables"),
    "worker": ("ops.cmd_worker", "run a cloud worker (ingest, user vectors, match, assemble agents)"),
    "fleet": ("ops.cmd_fleet", "run a device fleet process hosting virtual devices"),
    "cloud": ("ops.cmd_cloud", "cloud jobs: train-global"),
    "demo": ("ops.cmd_demo", "the main job: stack, workers, fleet, a dataset replayed, exports"),
    "replay": ("ops.cmd_replay", "publish a dataset, events file or topic range into a namespace"),
    "experiment": ("ops.cmd_experiment", "the paper's arms and controls through the real pipeline"),
    "bench": ("ops.cmd_bench", "benchmarks that write JSON beside their ceilings"),
    "chaos": ("ops.cmd_chaos", "soak run: bad input, crashes and restarts"),
    "validate": ("ops.cmd_validate", "check a behaviour-event file against the input contract (publishes nothing)"),
}

NO_KEY = frozenset({"config", "validate", "stack", "clean"})  # commands that never pseudonymize


def build_parser(available: dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coda", description="CoDA on a real stream (arXiv 2201.10382)")
    parser.add_argument("--state-dir", help="state directory (env CODA_STATE_DIR, default .coda)")
    parser.add_argument("--bootstrap", help="external Kafka bootstrap servers (env CODA_BOOTSTRAP)")
    parser.add_argument("--prefix", dest="topic_prefix", help="topic namespace prefix (env CODA_TOPIC_PREFIX)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in available.items():
        _, help_text = COMMANDS[name]
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)  # type: ignore[attr-defined]
        cmd.set_defaults(handler=module.run)  # type: ignore[attr-defined]
    return parser


def _available() -> dict[str, object]:
    """Command modules that exist in this build (commands land one issue at a time)."""
    found = {}
    for name, (module_name, _) in COMMANDS.items():
        try:
            found[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return found


def configure_logging(settings: Settings, verbose: int) -> None:
    level = [settings.log_level.upper(), "INFO", "DEBUG"][min(verbose, 2)]
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )
    if level != "DEBUG":  # the Kafka and Faust stacks are chatty at INFO
        for noisy in ("aiokafka", "faust", "mode", "kafka"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_available())
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("state_dir", "bootstrap", "topic_prefix")}
    if overrides["state_dir"]:
        from pathlib import Path

        overrides["state_dir"] = Path(overrides["state_dir"])
    try:
        settings = Settings.from_env(**overrides)
        if args.command not in NO_KEY:
            from ops.keys import resolve_pseudonym_key

            settings = resolve_pseudonym_key(settings)
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


if __name__ == "__main__":
    raise SystemExit(main())
