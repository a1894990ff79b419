"""Validation of JSONL training files, streamed line by line so memory stays flat.

Three formats, one per file, recognised from the first example:

* ``chat`` (OpenAI's supervised format): ``{"messages": [{"role", "content"}, …]}`` with at least one
  assistant message;
* ``preference`` (OpenAI's DPO format): ``{"input": {"messages": […]}, "preferred_output": [assistant
  message], "non_preferred_output": [assistant message]}``;
* ``text`` (pretraining): ``{"text": "…"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROLES = {"system", "user", "assistant"}
"""The roles the trainer's chat template renders."""
RECIPE_FORMATS = {"sft": {"chat"}, "lora": {"chat"}, "dpo": {"preference"}, "pretrain": {"text", "chat"},
                  "tiny-chat": {"chat", "text"}}
"""Which file formats each recipe trains on."""


class InvalidFile(ValueError):
    """The file is not usable training data; the message says which line and why."""


@dataclass(frozen=True)
class FileSummary:
    format: str
    examples: int


def _check_messages(messages, where: str, *, need_assistant: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidFile(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidFile(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise InvalidFile(f"{where}: messages[{i}].role must be one of {sorted(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise InvalidFile(f"{where}: messages[{i}].content must be a string")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise InvalidFile(f"{where}: the example has no assistant message to learn from")


def _format_of(obj: dict) -> str:
    if "messages" in obj:
        return "chat"
    if "preferred_output" in obj or "input" in obj:
        return "preference"
    if "text" in obj:
        return "text"
    raise InvalidFile("expected an object with 'messages' (chat), 'input'/'preferred_output'/'non_preferred_output' "
                      "(preference) or 'text'")


def check_example(obj, fmt: str, where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidFile(f"{where}: each line must be a JSON object")
    if fmt == "chat":
        _check_messages(obj.get("messages"), where, need_assistant=True)
    elif fmt == "preference":
        inp = obj.get("input")
        _check_messages(inp.get("messages") if isinstance(inp, dict) else None, f"{where}: input", need_assistant=False)
        for key in ("preferred_output", "non_preferred_output"):
            out = obj.get(key)
            _check_messages(out, f"{where}: {key}", need_assistant=True)
    elif not isinstance(obj.get("text"), str) or not obj["text"].strip():
        raise InvalidFile(f"{where}: 'text' must be a non-empty string")


def _parse(raw: bytes, where: str, first: bool):
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError:
        raise InvalidFile(f"{where}: not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFile(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise InvalidFile(f"{where}: each line must be a JSON object")
    return obj


def validate_lines(lines: Iterable[bytes]) -> FileSummary:
    """Check every line; raise :class:`InvalidFile` at the first bad one."""
    fmt, count = "", 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        obj = _parse(raw, where, number == 1)
        try:
            this = _format_of(obj)
        except InvalidFile as exc:
            raise InvalidFile(f"{where}: {exc}") from None
        if fmt and this != fmt:
            raise InvalidFile(f"{where}: holds a {this} example, but the file's first example is {fmt}")
        fmt = this
        check_example(obj, fmt, where)
        count += 1
    if count == 0:
        raise InvalidFile("the file has no examples (it is empty)")
    return FileSummary(fmt, count)


def validate_path(path: Path | str, purpose: str = "fine-tune") -> FileSummary:
    path = Path(path)
    if not path.is_file():
        raise InvalidFile(f"{path} does not exist")
    with path.open("rb") as f:
        return validate_batch_lines(f) if purpose == "batch" else validate_lines(f)


def validate_batch_lines(lines: Iterable[bytes]) -> FileSummary:
    """A batch input file: JSONL whose every line is a JSON object. What the objects hold (custom_id, method,
    url, body) is checked when a batch is made from the file, against the batch's endpoint
    (``services.trainer.batches.validate``), so the errors land on the batch, as OpenAI's do."""
    count = 0
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            _parse(raw, f"line {number}", number == 1)
            count += 1
    if count == 0:
        raise InvalidFile("the file has no requests (it is empty)")
    return FileSummary("batch", count)


def check_recipe_format(recipe: str, fmt: str) -> None:
    allowed = RECIPE_FORMATS.get(recipe, set())
    if fmt not in allowed:
        raise InvalidFile(f"the {recipe} recipe trains on {' or '.join(sorted(allowed))} examples, "
                          f"but the file holds {fmt} examples")
