"""`coda config`: the effective settings, each with its environment variable."""

from __future__ import annotations

import argparse

from streams.settings import SECTIONS, Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print the README configuration table")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print("| section | environment variable | default | setting |\n|---|---|---|---|")
        for section, env, default, name in settings.table():
            print(f"| {section} | `{env}` | `{default}` | {name} |")
        return 0
    secret = {"sasl_password", "pseudonym_key"}
    envs = settings.env_names()
    for section in SECTIONS:
        print(f"# {section}")
        for name, value in settings.section(section).items():
            print(f"{envs[name]:32} {'***' if name in secret else value}")
    return 0
