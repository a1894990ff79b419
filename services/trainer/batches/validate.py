"""What a batch's input file and create request must hold, checked when the batch is made.

A line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {…, "model"}}``, as
OpenAI's. A problem with the request itself (endpoint, window, metadata) refuses the create; problems with
lines make a batch that is ``failed`` at once, whose ``errors`` name each line and field (the first
:data:`MAX_ERRORS` of them). What a body holds beyond ``model`` and ``stream`` is checked when the line runs,
by the route it goes to: a bad body is that line's 400 in the error file, and the other lines run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_ERRORS = 100
MAX_CUSTOM_ID = 512
MAX_WINDOW_S = 24 * 3600
_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([hms])$")
_UNIT_S = {"h": 3600, "m": 60, "s": 1}


class BadBatchRequest(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def window_seconds(window: str) -> int:
    """``24h`` as OpenAI takes it; shorter windows (``30m``, ``90s``) as our extension."""
    m = _WINDOW.match(window or "")
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m else 0
    if not m or seconds > MAX_WINDOW_S:
        raise BadBatchRequest(f"completion_window must be '24h' or a shorter '<n>h', '<n>m' or '<n>s'; "
                              f"got {window[:40]!r}.", "completion_window")
    return seconds


def check_request(endpoint: str, metadata: dict[str, str]) -> None:
    if endpoint not in ENDPOINTS:
        raise BadBatchRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}; got {endpoint[:100]!r}.",
                              "endpoint")
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise BadBatchRequest("metadata holds at most 16 pairs, keys of up to 64 characters and values of up "
                              "to 512.", "metadata")


@dataclass
class Line:
    number: int
    custom_id: str
    body: str


@dataclass
class Parsed:
    lines: list[Line] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    error_count: int = 0
    models: set[str] = field(default_factory=set)

    def error(self, line: int, code: str, message: str, param: str | None = None) -> None:
        """One problem; the file's own (line 0) go first, so the cap never hides them."""
        self.error_count += 1
        doc = {"code": code, "message": message, "param": param, "line": line or None}
        if not line:
            self.errors.insert(0, doc)
            del self.errors[MAX_ERRORS:]
        elif len(self.errors) < MAX_ERRORS:
            self.errors.append(doc)


def _check(obj, number: int, endpoint: str, seen: set[str], out: Parsed) -> Line | None:
    where = f"Line {number}"
    if not isinstance(obj, dict):
        out.error(number, "invalid_json_line", f"{where} is not a JSON object.")
        return None
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        out.error(number, "invalid_custom_id",
                  f"{where}: custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters.",
                  "custom_id")
        return None
    if custom_id in seen:
        out.error(number, "duplicate_custom_id",
                  f"{where}: custom_id {custom_id[:100]!r} is used by an earlier line; each must be unique.",
                  "custom_id")
        return None
    seen.add(custom_id)
    if obj.get("method") != "POST":
        out.error(number, "invalid_method", f"{where}: method must be 'POST'.", "method")
        return None
    if obj.get("url") != endpoint:
        out.error(number, "invalid_url", f"{where}: url is {str(obj.get('url'))[:100]!r}, but this batch's "
                                         f"endpoint is {endpoint!r}; every line must name it.", "url")
        return None
    body = obj.get("body")
    if not isinstance(body, dict):
        out.error(number, "invalid_body", f"{where}: body must be a JSON object (the request's body).", "body")
        return None
    if not isinstance(body.get("model"), str) or not body["model"]:
        out.error(number, "missing_required_parameter", f"{where}: body.model is required.", "body.model")
        return None
    if body.get("stream"):
        out.error(number, "invalid_body", f"{where}: a batch's requests cannot stream; leave body.stream out.",
                  "body.stream")
        return None
    out.models.add(body["model"])
    return Line(number, custom_id, json.dumps(body, separators=(",", ":")))


def parse_file(path: Path | str, endpoint: str, max_lines: int) -> Parsed:
    """Every line of the input file, checked; problems are collected, not raised."""
    out, seen, count = Parsed(), set(), 0
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            count += 1
            try:
                obj = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                out.error(number, "invalid_json_line", f"Line {number} is not valid JSON.")
                continue
            if (line := _check(obj, number, endpoint, seen, out)) is not None:
                out.lines.append(line)
    if count == 0:
        out.error(0, "empty_file", "The input file holds no requests.")
    if count > max_lines:
        out.error(0, "too_many_requests", f"The input file holds {count} requests; a batch holds at most "
                                          f"{max_lines}.")
    return out
