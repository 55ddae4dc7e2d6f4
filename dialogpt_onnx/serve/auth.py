"""API keys: `Authorization: Bearer KEY` on every route but the chat page and the liveness probe. Each key
is a tenant of its own (its requests share cached chats only with each other). Hand-written: Starlette has
no bearer-key check, and a constant-time comparison over every key is a few lines."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from dialogpt_onnx.runtime.errors import UsageError

ENV_VAR = "DIALOGPT_API_KEY"
ADMIN_ENV_VAR = "DIALOGPT_ADMIN_KEY"


class Unauthorized(Exception):
    """No key, or not one of the server's (401)."""


class ApiKeys:
    """The server's API keys; `admin` keys are API keys too, and also see the process-wide statistics."""

    def __init__(self, keys: Iterable[str] = (), admin: Iterable[str] = ()) -> None:
        admin = list(admin)
        self._keys = [(k.encode(), "key-" + hashlib.sha256(k.encode()).hexdigest()[:16]) for k in [*keys, *admin]]
        self._admin = {"key-" + hashlib.sha256(k.encode()).hexdigest()[:16] for k in admin}

    def is_admin(self, tenant: str | None) -> bool:
        return tenant is not None and tenant in self._admin

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of a request's `Authorization` header: its key's id (None when no keys are set).
        Every key is compared, each in constant time, so the time taken tells nothing about a key."""
        if not self._keys:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        given_bytes = given.strip().encode() if scheme.lower() == "bearer" else b""
        found = None
        for key, key_id in self._keys:
            if hmac.compare_digest(given_bytes, key):
                found = key_id
        if found is None:
            raise Unauthorized
        return found


def read_keys(flags: list[str] | None, file: str | None, env: str | None) -> list[str]:
    """Keys from --api-key (repeatable), --api-key-file (one per line, # comments) and $DIALOGPT_API_KEY."""
    keys = list(flags or [])
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --api-key-file {file} ({getattr(e, 'strerror', None) or e}): give a "
                             "readable text file with one key per line", "api_key_file") from None
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if env:
        keys.append(env.strip())
    short = [k for k in keys if len(k) < 16 or any(c.isspace() for c in k)]
    if short:
        raise UsageError("an API key must be at least 16 characters without spaces (e.g. `openssl rand -hex 24`)",
                         "api_key")
    return keys
