"""README.md's fenced code blocks, each with the heading it is under, its text and a stable key.

The README is a test: every command it shows runs in a test, as written. ``tests/test_readme_blocks.py`` holds
the registry from each block's key to the tests that run it; tests that run a block find it here, by heading
(:func:`block`), rather than by a regular expression of their own.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SHELL = {"bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class Block:
    heading: str
    """The nearest heading above the block, as written (``## Talk to it``); ``""`` before any heading."""
    lang: str
    """The fence's info string's first word (``bash``, ``python``); ``""`` for a bare fence."""
    text: str
    """The lines between the fences, each ending in a newline."""
    line: int
    """1-based line of the opening fence in README.md."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def key(self) -> str:
        """``<heading> [<first 12 hex of sha256(text)>]``: changes whenever the block's text or heading does."""
        return f"{self.heading} [{self.digest}]"

    @property
    def first_line(self) -> str:
        return next((s for s in self.text.splitlines() if s.strip()), "")

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL

    def commands(self) -> list[list[str]]:
        """A shell block as shell commands (``\\`` continuations joined, comments dropped), each split into words as
        the shell would (``shlex``); ``a && b`` gives two commands."""
        joined = re.sub(r"\\\n", " ", self.text)
        lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
        return [list(g) for words in lines for is_and, g in itertools.groupby(words, lambda w: w == "&&")
                if not is_and]


def variants(words: list[str]) -> list[list[str]]:
    """A synopsis' optional ``[…]`` parts (``llmsvc keys list [--owner team-a] [--all]``) all left out, and all
    given; just ``words`` when it has none."""
    bare, full, depth = [], [], 0
    for w in words:
        opening, closing = w.startswith("["), w.endswith("]")
        depth += opening
        word = w.removeprefix("[").removesuffix("]") if opening or closing else w
        if not depth:
            bare.append(word)
        full.append(word)
        depth -= closing
    return [bare] if bare == full else [bare, full]


def parse(text: str) -> list[Block]:
    """Every fenced block of a Markdown text (backtick or tilde fences, CommonMark's closing rule)."""
    blocks: list[Block] = []
    heading, fence, lang, body, start = "", "", "", [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                blocks.append(Block(heading, lang, "".join(s + "\n" for s in body), start))
                fence = ""
            else:
                body.append(line)
        elif m := _FENCE.match(line):
            fence, lang, body, start = m.group(1), m.group(2), [], number
        elif m := _HEADING.match(line):
            heading = f"{m.group(1)} {m.group(2)}"
    if fence:
        raise ValueError(f"README.md line {start}: a ``` fence is never closed")
    return blocks


def blocks(path: Path = README) -> list[Block]:
    return parse(path.read_text())


def block(heading: str, lang: str | None = None, index: int = 0) -> Block:
    """The ``index``-th block (of ``lang``, if given) under ``heading`` (written with its ``#``s)."""
    found = [b for b in blocks() if b.heading == heading and lang in (None, b.lang)]
    if len(found) <= index:
        raise LookupError(f"README.md has no {lang or ''} block #{index} under {heading!r}")
    return found[index]
