"""Namespaces isolate experiments: own topic prefix, consumer groups, index and state directory."""

from __future__ import annotations

import re

from streams.settings import Settings

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


def in_namespace(settings: Settings, name: str) -> Settings:
    """Settings whose topics, groups and files cannot touch another namespace's or live ones."""
    if not _NAME.match(name):
        raise ValueError(f"namespace {name!r}: use 1-41 lowercase letters, digits, '-' or '_'")
    return settings.replace(topic_prefix=f"{settings.topic_prefix}-{name}", app_id=f"{settings.app_id}-{name}",
                            state_dir=settings.state_dir / "ns" / name)
