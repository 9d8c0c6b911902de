"""API keys ("Security"): keys arrive in the ``X-API-Key`` header and are compared, in
constant time, with the SHA-256 hashes in the settings (the keys themselves are never stored).

API keys are long random tokens (``python -c "import secrets; print(secrets.token_urlsafe(32))"``),
not passwords, so a fast hash suffices: it cannot be reversed, and it costs nothing per request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from fastapi import Security
from fastapi.security import APIKeyHeader

from service.errors import Forbidden, Unauthorized
from service.settings import ApiKey, Scope, Settings

HEADER = "X-API-Key"
#: The OpenAPI security scheme (and the header reader) of every keyed endpoint.
api_key_header = APIKeyHeader(
    name=HEADER, auto_error=False, scheme_name="ApiKey", description="An API key of this service."
)


def hash_key(key: str) -> str:
    """The settings entry of ``key``: ``sha256:<hex digest>``."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def exposure_warning(host: str, settings: Settings) -> str | None:
    """A warning when the service listens beyond this machine while its reads need no key (anyone who
    reaches it may classify fields and download job maps), else None."""
    if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.") or settings.read_requires_key:
        return None
    keys = "" if settings.api_keys else " and api_keys (cropstar serve --hash-key KEY prints an entry)"
    return (
        f"listening on {host}, where other machines may reach it, and reads need no key: anyone who can "
        f"connect may classify fields and download job maps. For production set read_requires_key: true{keys} "
        "(docs/rest-api.md, 'Authentication')"
    )


def find_key(keys: list[ApiKey], given: str) -> ApiKey | None:
    """The key whose hash matches ``given``; every stored hash is compared, in constant time."""
    digest = hash_key(given)
    found = None
    for key in keys:
        if hmac.compare_digest(key.hash, digest):
            found = key
    return found


def require_scope(settings: Settings, scope: Scope) -> Callable[[str | None], ApiKey]:
    """A FastAPI dependency: the caller's key, which must hold ``scope``. 401 without a key or with an
    unknown one (every key is unknown when none is configured), 403 for a key without the scope."""

    def check(given: str | None = Security(api_key_header)) -> ApiKey:
        challenge = {"WWW-Authenticate": f'ApiKey header="{HEADER}"'}
        if not given:
            raise Unauthorized(f"this endpoint needs an API key with scope {scope!r} in the {HEADER} header",
                               headers=challenge)
        key = find_key(settings.api_keys, given)
        if key is None:
            raise Unauthorized(f"the API key in the {HEADER} header is not known to this service", headers=challenge)
        if scope not in key.scopes:
            raise Forbidden(f"API key {key.name!r} lacks scope {scope!r} (it has {', '.join(key.scopes) or 'none'})")
        return key

    return check


def read_dependencies(settings: Settings) -> list:
    """The dependencies of the read endpoints: a key with scope 'read' when ``read_requires_key``."""
    from fastapi import Depends

    return [Depends(require_scope(settings, "read"))] if settings.read_requires_key else []
