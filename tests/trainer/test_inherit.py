"""A fine-tune serves tool calls as its parent does: the parent's tool parser is copied into its llmsvc.json."""

from __future__ import annotations

import json

from trainer.job import inherited_serving


def test_a_fine_tune_keeps_its_parents_tool_parser(tmp_path):
    parent = tmp_path / "tiny-chat"
    parent.mkdir()
    (parent / "llmsvc.json").write_text(json.dumps({"name": "tiny-chat", "tool_parser": "hermes"}))
    assert inherited_serving(str(parent)) == {"tool_parser": "hermes"}


def test_nothing_is_inherited_without_a_parent_or_a_parser(tmp_path):
    assert inherited_serving(None) == {}
    assert inherited_serving(str(tmp_path / "missing")) == {}
    (tmp_path / "llmsvc.json").write_text("{not json")
    assert inherited_serving(str(tmp_path)) == {}
    (tmp_path / "llmsvc.json").write_text(json.dumps({"name": "base"}))
    assert inherited_serving(str(tmp_path)) == {}
