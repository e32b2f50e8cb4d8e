"""The pseudonym key: a random one per local state directory, the public default refused against a cluster."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from pathlib import Path

from streams.settings import DEV_PSEUDONYM_KEY, Settings, SettingsError

log = logging.getLogger(__name__)
KEY_FILE = "pseudonym.key"


def is_local(bootstrap: str) -> bool:
    """Every bootstrap server is on this machine (loopback): a test or local broker, not a cluster."""
    hosts = [s.strip().rsplit(":", 1)[0].strip("[]") for s in bootstrap.split(",") if s.strip()]
    if not hosts:
        return True
    for host in hosts:
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True


def resolve_pseudonym_key(settings: Settings, reproducible: bool = False) -> Settings:
    """Settings with a key fit for where they point.

    An explicit CODA_PSEUDONYM_KEY is kept. The public development key is refused against an
    external cluster (anyone who knows it can re-identify users by dictionary) unless
    CODA_ALLOW_DEV_KEY=true; with the embedded stack it is swapped for the state directory's
    own random key, except for `reproducible` runs (experiments and benchmarks on public
    datasets), whose arm split hashes pseudonyms and must come out the same on every machine.
    """
    if settings.pseudonym_key != DEV_PSEUDONYM_KEY:
        return settings
    if settings.embedded and reproducible:
        return settings
    if settings.embedded:
        return settings.replace(pseudonym_key=local_key(settings.state_dir))
    if is_local(settings.bootstrap):
        return settings
    if settings.allow_dev_key:
        log.warning("using the public development pseudonym key against %s (CODA_ALLOW_DEV_KEY)", settings.bootstrap)
        return settings
    raise SettingsError(
        f"CODA_PSEUDONYM_KEY is the public development key while CODA_BOOTSTRAP={settings.bootstrap!r} points at "
        "an external cluster: anyone who knows it can re-identify users from their pseudonyms. Set "
        "CODA_PSEUDONYM_KEY to a secret (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`), "
        "or CODA_ALLOW_DEV_KEY=true to accept this knowingly")


def local_key(state_dir: Path) -> str:
    """The state directory's key, created once (random, mode 0600) and read back after.

    Written to a private temp file and linked into place, so two processes starting at once
    agree on one key and neither reads a half-written file.
    """
    path = state_dir / KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by others; chmod 600 it", path)
    key = path.read_text().strip()
    if not key:
        raise SettingsError(f"{path} is empty: remove it to make a new pseudonym key")
    return key
