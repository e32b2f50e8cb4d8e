"""`coda config`: the effective settings, each with its environment variable."""

from __future__ import annotations

import argparse

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print the README configuration table")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print("| environment variable | default | setting |\n|---|---|---|")
        for env, default, name in settings.table():
            print(f"| `{env}` | `{default}` | {name} |")
        return 0
    secret = {"sasl_password", "pseudonym_key"}
    for name, env in settings.env_names().items():
        value = "***" if name in secret else getattr(settings, name)
        print(f"{env:32} {value}")
    return 0
