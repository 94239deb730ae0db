"""The token of an `Authorization: Bearer …` header, as the gateway and the admin API read it.

The auth scheme is case-insensitive (RFC 9110, section 11.1): `bearer x` and `BEARER x`
carry the same token as `Bearer x`.
"""

from __future__ import annotations


def bearer_token(header: str) -> str:
    """The token after a `Bearer` scheme of any case; empty when the header has another scheme."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
