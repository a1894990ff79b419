"""Key format, hashing and the constant-time comparison (pure logic)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.auth import keys


def test_generated_keys_carry_256_random_bits_and_a_public_prefix():
    key = keys.generate()
    assert key.startswith("sk-")
    raw = base64.urlsafe_b64decode(key[3:] + "=")
    assert len(raw) * 8 >= 256
    assert keys.prefix(key) == key[:12] and keys.well_formed(key)
    assert len({keys.generate() for _ in range(1000)}) == 1000


def test_digest_is_sha256_and_only_the_exact_key_matches():
    key = keys.generate()
    stored = keys.digest(key)
    assert stored == hashlib.sha256(key.encode()).hexdigest()
    assert keys.matches(key, stored)
    assert not keys.matches(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)
    assert not keys.matches(key + "x", stored)


@pytest.mark.parametrize("bad", [
    "", "sk-", "sk-short", "x" * 19, "sk-" + "a" * 254,  # too short / too long
    "sk-" + "é" * 30, "sk-" + "🔑" * 20, "sk-abc def ghi jkl mno", "sk-abc\tdefghijklmnopqrs",
    "sk-abcdefghijklmnopqrs\x00", "sk-abcdefghijkl\nmnopqrs",
])
def test_malformed_keys_are_refused_before_any_lookup(bad):
    assert not keys.well_formed(bad)
