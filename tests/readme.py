"""The fenced code blocks of README.md and of each ``services/*/README.md``, each with the heading it is under,
its text and a stable key.

The READMEs are tests: every command they show runs in a test, as written. ``tests/test_readme_blocks.py`` holds
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
SERVICE_READMES = sorted(ROOT.glob("services/*/README.md"))
"""The services' own READMEs, whose blocks the registry covers as README.md's."""

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
    """1-based line of the opening fence in its file."""
    source: str = "README.md"
    """The file, relative to the repository (``services/trainer/README.md``)."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def key(self) -> str:
        """``<heading> [<first 12 hex of sha256(text)>]``, after ``<source>: `` for a file other than README.md:
        changes whenever the block's text, heading or file does."""
        key = f"{self.heading} [{self.digest}]"
        return key if self.source == "README.md" else f"{self.source}: {key}"

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


def parse(text: str, source: str = "README.md") -> list[Block]:
    """Every fenced block of a Markdown text (backtick or tilde fences, CommonMark's closing rule)."""
    blocks: list[Block] = []
    heading, fence, lang, body, start = "", "", "", [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                blocks.append(Block(heading, lang, "".join(s + "\n" for s in body), start, source))
                fence = ""
            else:
                body.append(line)
        elif m := _FENCE.match(line):
            fence, lang, body, start = m.group(1), m.group(2), [], number
        elif m := _HEADING.match(line):
            heading = f"{m.group(1)} {m.group(2)}"
    if fence:
        raise ValueError(f"{source} line {start}: a ``` fence is never closed")
    return blocks


def blocks(path: Path = README) -> list[Block]:
    return parse(path.read_text(), str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name)


def all_blocks() -> list[Block]:
    """README.md's blocks, then each service README's."""
    return [b for path in (README, *SERVICE_READMES) for b in blocks(path)]


def block(heading: str, lang: str | None = None, index: int = 0, path: Path = README) -> Block:
    """The ``index``-th block (of ``lang``, if given) under ``heading`` (written with its ``#``s) in ``path``."""
    found = [b for b in blocks(path) if b.heading == heading and lang in (None, b.lang)]
    if len(found) <= index:
        raise LookupError(f"{path.name} has no {lang or ''} block #{index} under {heading!r}")
    return found[index]
