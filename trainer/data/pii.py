"""PII scrubbing: emails, phone numbers and IP addresses become placeholders, counted by kind."""

from __future__ import annotations

import re
from collections import Counter

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.]*\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
# A phone number: optional +country code, then digit groups split by space, dot, dash or parentheses.
# Whether a match is a phone number is decided by its digit count (see _phone), not by the pattern alone,
# so "3 + 4 = 7" or a year never qualify.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w])"
                   r"|(?<![\w+])\+?\d{10,13}(?!\w)")

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>"}


class PIIScrubber:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        """Replacements made, by kind (``email``, ``phone``, ``ip``)."""

    def _sub(self, kind: str, pattern: re.Pattern, text: str, accept=lambda m: True) -> str:
        def repl(m: re.Match) -> str:
            if not accept(m):
                return m.group(0)
            self.counts[kind] += 1
            return PLACEHOLDERS[kind]

        return pattern.sub(repl, text)

    @staticmethod
    def _phone(m: re.Match) -> bool:
        s = m.group(0)
        digits = sum(ch.isdigit() for ch in s)
        if not 9 <= digits <= 15:
            return False
        if any(ch in s for ch in "+(-."):
            return True
        # Only spaces between the groups: a list of small numbers ("12 34 56 78 90") is not a phone number.
        return all(len(g) >= 3 for g in s.split())

    def scrub(self, text: str) -> str:
        # Emails first (their domains may contain digits), then IPs (dotted quads look like phone groups).
        text = self._sub("email", EMAIL, text)
        text = self._sub("ip", IPV6, text)
        text = self._sub("ip", IPV4, text)
        return self._sub("phone", PHONE, text, self._phone)
