"""Bearer-token auth: Serve's HTTP port has none of its own. Keys from FSG_SERVE_API_KEYS and/or a secret file."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fsg_ray.config import ConfigError

KEYS_ENV = "FSG_SERVE_API_KEYS"  # comma-separated


def load_api_keys(keys_file: str | None) -> tuple[str, ...]:
    """The configured tokens; none means the API is open. A missing or empty secret file is an error, not an open API."""
    keys = [key.strip() for key in os.environ.get(KEYS_ENV, "").split(",") if key.strip()]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"api_keys_file: cannot read {keys_file} ({exc.strerror})") from exc
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise ConfigError(f"api_keys_file: {keys_file} holds no key")
        keys += from_file
    return tuple(keys)


def authorized(header: str | None, keys: tuple[str, ...]) -> bool:
    """`Authorization: Bearer <key>` for one of the keys, compared in constant time."""
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    matches = [hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys]
    return any(matches)
