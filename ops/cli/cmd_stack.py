"""`coda stack up | status | down`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ops.stack import broker as stack
from streams.settings import Settings
from streams.topics import load_topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "status", "down"])
    parser.add_argument("--port", type=int, help="broker port for `up` (env CODA_BROKER_PORT; default free)")
    parser.add_argument("--tls", action="store_true",
                        help="`up`: put a TLS terminator that requires client certificates (local CA under "
                             "<state dir>/tls) in front of the embedded broker")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.port:
        settings = settings.replace(broker_port=args.port)
    topics = load_topics(settings.topics_file, settings.topic_prefix)
    if args.action == "up":
        state, created = stack.up(settings, topics, tls=args.tls)
        where = state.bootstrap if state else settings.bootstrap
        origin = f"embedded tansu pid {state.pids}" if state else "external cluster (nothing started)"
        if settings.embedded:
            from ops.stack.keys import KEY_FILE, local_key

            local_key(settings.state_dir)  # this state directory's own pseudonym key (mode 0600)
            origin += f"; pseudonym key in {settings.state_dir / KEY_FILE}"
        print(f"broker {where} ({origin}); created {len(created)} topic(s), {len(list(topics))} declared")
        if state is not None and state.tls_dir:
            from ops.stack import tls

            files = tls.TlsFiles(Path(state.tls_dir))
            files.env_file.write_text("\n".join(tls.env_lines(files)) + "\n")
            print(f"TLS with client certificates required (CA {files.ca}); clients need:")
            print("\n".join(tls.env_lines(files)))
        elif args.tls:
            print("--tls ignored: an external bootstrap is configured")
        return 0
    if args.action == "status":
        problem = stack.broker_problem(settings)
        if problem is not None:
            print(problem)
            return 1
        print("\n".join(stack.status_lines(settings, topics)))
        return 0
    if not settings.embedded:
        print("external bootstrap configured: nothing was started, nothing to stop")
        return 0
    stopped = stack.down(settings)
    print(f"stopped {len(stopped)} process(es): {stopped}" if stopped else "nothing running")
    return 0
