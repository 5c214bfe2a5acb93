"""Optional bearer-token authentication of the matching endpoints.

The token is a shared secret that the ingress replica reads once, at start, from the
environment variable ``DVAMN_API_TOKEN``. When it is set, ``POST /match``,
``POST /match/keypoints`` and ``GET /catalog`` answer only requests that carry
``Authorization: Bearer <token>`` (others get 401 with ``WWW-Authenticate: Bearer``);
``GET /healthz`` and the documentation stay open, so that load balancers and probes need
no secret. When it is not set, the service answers everyone (a loopback-only service).

Tokens are compared in constant time: both sides are hashed to 32 bytes and compared
with ``hmac.compare_digest``, so neither the token's content nor its length can be read
from response times. The token itself never appears in an answer, a log line or an error.
"""

import hashlib
import hmac
import ipaddress
import os
from typing import Dict, Mapping, Optional

API_TOKEN_ENV = "DVAMN_API_TOKEN"
MIN_TOKEN_CHARS = 16
TOKEN_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


class TokenConfigError(ValueError):
    """``DVAMN_API_TOKEN`` is set to something that cannot be a safe bearer token."""


def check_token(token: str, where: str = API_TOKEN_ENV) -> str:
    """``token`` when it is usable as a bearer token; otherwise ``TokenConfigError``
    naming ``where`` and what is wrong (never the token's value)."""
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenConfigError(
            f"{where} holds {len(token)} characters; a token needs at least "
            f"{MIN_TOKEN_CHARS} ({TOKEN_HINT}), or unset {where} to serve without one"
        )
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise TokenConfigError(
            f"{where} holds spaces, control or non-ASCII characters, which an HTTP "
            f"Authorization header cannot carry intact; {TOKEN_HINT}"
        )
    return token


def api_token_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The configured token (``$DVAMN_API_TOKEN``), None when unset; an unusable value
    (empty, short, with spaces) raises ``TokenConfigError`` rather than serving open."""
    value = (os.environ if environ is None else environ).get(API_TOKEN_ENV)
    return None if value is None else check_token(value)


def token_matches(presented: Optional[str], expected: str) -> bool:
    """Whether the client's token is ``expected``, in time independent of both."""
    if presented is None:
        return False
    presented_digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(presented_digest, expected_digest)


def bearer_headers(token: Optional[str]) -> Dict[str, str]:
    """The request headers that carry ``token`` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, token: Optional[str]) -> Optional[str]:
    """What ``dvamn serve`` warns about before binding ``host``: a service reachable from
    other machines that answers anyone. None when bound to loopback or a token is set."""
    if token is not None or is_loopback(host):
        return None
    return (
        f"{host} is reachable from other machines and {API_TOKEN_ENV} is not set, so anyone "
        f"who reaches port {port} can query the service; set {API_TOKEN_ENV} (see "
        "docs/serving.md, Authentication)"
    )
