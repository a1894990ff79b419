"""The tiny-chat recipe: its synthetic corpus, and ``trainer.tiny_chat.build`` as ``llmsvc up`` calls it.

The full build (1,000 steps, a few minutes) is measured by ``bench/train_tiny_chat.py``; here a
shortened build checks the contract: progress, atomic publication, recorded accuracy, no leftovers.
"""

from __future__ import annotations

import json

from trainer.data import synthetic
from trainer.data.tokenizer import byte_tokenizer


def test_corpus_is_deterministic_and_held_out_prompts_are_unseen(tmp_path):
    a = synthetic.write_corpus(tmp_path / "a.jsonl", 3000, seed=4)
    b = synthetic.write_corpus(tmp_path / "b.jsonl", 3000, seed=4)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text() and a == b
    items = synthetic.held_out(20, seed=4, exclude=a)
    assert {i["task"] for i in items} == set(synthetic.TASKS) - {"greet"}
    assert len(items) == 20 * 6 and not {i["prompt"] for i in items} & a
    record = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]


def test_every_task_has_one_checkable_answer():
    import random

    rng = random.Random(0)
    for _ in range(200):
        p, a = synthetic.arithmetic(rng)
        assert str(eval(p[len("What is "):-1])) == a  # noqa: S307 (our own generated expression)
        p, a = synthetic.reverse(rng)
        assert p.split(": ")[1][::-1] == a
        p, a = synthetic.sort(rng)
        assert sorted(p.split(": ")[1].split()) == a.split()
        p, a = synthetic.count(rng)
        _, letter, _, text = p.split(" ")
        assert str(text.count(letter)) == a
        p, a = synthetic.table(rng)
        name = p.split("Where does ")[1].split(" ")[0]
        assert f"\n{name} | {a}\n" in p


def test_letters_stay_letters_for_reversal_and_counting():
    """Names and cities are single tokens; strings to reverse or count never are."""
    tok = byte_tokenizer(synthetic.TOKEN_WORDS)
    assert tok.tokenize("ann | paris") == ["ann", "Ġ", "|", "Ġ", "paris"]
    assert tok.tokenize("Reverse: bannx")[2:] == list("bannx")
    import random

    rng = random.Random(1)
    for _ in range(300):
        p, _ = synthetic.reverse(rng)
        s = p.split(": ")[1]
        assert tok.tokenize(s) == list(s)


def test_build_publishes_the_model_with_progress_and_accuracy(tmp_path):
    from trainer.tiny_chat import build

    calls = []
    out = build(tmp_path / "models" / "tiny-chat", progress=lambda *a: calls.append(a),
                overrides={"hyperparameters": {"steps": 12, "log_every": 4},
                           "tiny_chat": {"examples": 400, "eval_per_task": 2}})
    assert out == tmp_path / "models" / "tiny-chat"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-chat"]  # no .tmp, no .work left
    steps = [c[0] for c in calls]
    assert steps == sorted(steps) and calls[0][0] == 0 and calls[-1] == (14, 14, "done")
    assert any(label.startswith("training step") for _, _, label in calls)
    meta = json.loads((out / "llmsvc.json").read_text())
    assert meta["recipe"] == "tiny-chat" and meta["name"] == "tiny-chat"
    assert 0 <= meta["metrics"]["accuracy"] <= 1 and "accuracy_table" in meta["metrics"]
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 4
