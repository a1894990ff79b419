"""Validation of training JSONL: every bad file is refused with the line and the reason."""

from __future__ import annotations

import json

import pytest

from services.trainer.datafile import InvalidFile, check_recipe_format, validate_lines

CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
PREF = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}


def lines(*rows) -> list[bytes]:
    return [(r if isinstance(r, (str, bytes)) else json.dumps(r)).encode() if not isinstance(r, bytes) else r
            for r in rows]


@pytest.mark.parametrize("rows,fmt,count", [
    ([CHAT, CHAT, ""], "chat", 2),
    ([PREF], "preference", 1),
    ([{"text": "a document"}, {"text": "another"}], "text", 2),
])
def test_good_files(rows, fmt, count):
    summary = validate_lines(lines(*rows))
    assert (summary.format, summary.examples) == (fmt, count)


@pytest.mark.parametrize("rows,expected", [
    ([], "no examples"),
    (["", "   "], "no examples"),
    ([CHAT, "{not json"], "line 2: not valid JSON"),
    ([b"\xff\xfe{}"], "line 1: not UTF-8"),
    (["[1, 2]"], "line 1: each line must be a JSON object"),
    ([{"prompt": "x", "completion": "y"}], "line 1: expected an object with 'messages'"),
    ([{"messages": []}], "line 1: 'messages' must be a non-empty list"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "messages[0].role must be one of"),
    ([{"messages": [{"role": "user", "content": 3}]}], "messages[0].content must be a string"),
    ([{"messages": [{"role": "user", "content": "only a question"}]}], "no assistant message"),
    ([CHAT, {"text": "mixed formats"}], "line 2: holds a text example, but the file's first example is chat"),
    ([{**PREF, "preferred_output": []}], "preferred_output: 'messages' must be a non-empty list"),
])
def test_bad_files_name_the_line_and_the_problem(rows, expected):
    with pytest.raises(InvalidFile, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_lines(lines(*rows))


def test_recipes_take_their_formats():
    check_recipe_format("sft", "chat")
    check_recipe_format("dpo", "preference")
    with pytest.raises(InvalidFile, match="the dpo recipe trains on preference examples, but the file holds chat"):
        check_recipe_format("dpo", "chat")
