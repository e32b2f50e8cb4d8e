"""Keyed pseudonyms: raw user and device ids never travel past ingest."""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(key: str, kind: str, raw_id: str) -> str:
    """HMAC-SHA256 of `kind:raw_id` under the deployment's secret key, 20 hex chars.

    Keyed, so nobody without the key can test a guessed id against a pseudonym; `kind`
    separates user and device namespaces so equal raw strings do not collide.
    """
    mac = hmac.new(key.encode(), f"{kind}:{raw_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:20]


def user_pseudonym(key: str, user_id: str) -> str:
    return pseudonym(key, "user", user_id)


def device_pseudonym(key: str, device_id: str) -> str:
    return pseudonym(key, "device", device_id)
