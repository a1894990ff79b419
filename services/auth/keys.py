"""API key format: ``sk-`` + 43 base64url characters (256 random bits).

Only ``prefix(key)`` (public, the lookup index) and ``digest(key)`` (SHA-256)
are ever stored. SHA-256 without salt or stretching is right here: the secret
has 256 bits of entropy, so there is nothing to brute-force, and the hot path
needs a hash that costs a microsecond, not a password hash that costs 100 ms.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-"
PREFIX_LEN = 12
"""Characters of the key kept as its public, indexed prefix (``sk-`` + 9 random characters, 54 bits)."""
MIN_LEN, MAX_LEN = 20, 256
"""Keys outside these lengths are refused before any lookup; the bootstrap key may be any such string."""
_RANDOM_BYTES = 32


def generate() -> str:
    """A new secret key; show it once and store only :func:`digest` and :func:`prefix`."""
    return KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def well_formed(key: str) -> bool:
    """Printable ASCII without spaces, of a sane length: anything else cannot be one of our keys."""
    return MIN_LEN <= len(key) <= MAX_LEN and key.isascii() and key.isprintable() and " " not in key


def prefix(key: str) -> str:
    return key[:PREFIX_LEN]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def matches(key: str, stored_digest: str) -> bool:
    """Constant-time comparison of the key's digest with the stored one."""
    return hmac.compare_digest(digest(key).encode(), stored_digest.encode())


def masked(prefix_: str) -> str:
    """How a key is shown after creation: its public prefix and an ellipsis."""
    return f"{prefix_}…"
