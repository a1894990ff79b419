"""SFT, LoRA (adapter and merged) and DPO on a tiny model, checked with transformers and peft."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from jobutil import final_status, losses, run_inprocess

from trainer.data import synthetic
from trainer.objectives import DPOLoss, sequence_logps


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, chat_jsonl) -> Path:
    """A nano Llama fine-tuned (from scratch) on copy/reverse chats: the base for LoRA and DPO."""
    tmp = tmp_path_factory.mktemp("sft")
    spec = {"recipe": "sft", "model": {"preset": "nano"}, "data": {"train": str(chat_jsonl), "tokenizer": "bytes"},
            "hyperparameters": {"steps": 30, "batch_size": 8, "seq_len": 128, "lr": 3e-3, "warmup_steps": 3},
            "output_dir": str(tmp / "sft")}
    code, events = run_inprocess(tmp, spec)
    assert code == 0, events
    curve = losses(events)
    assert curve[30] < curve[1]
    return Path(spec["output_dir"])


def _logits(model, tok, text: str = "Repeat: red cat") -> torch.Tensor:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def test_sft_model_records_its_parent_data_and_chat_template(sft_model, chat_jsonl):
    meta = json.loads((sft_model / "llmsvc.json").read_text())
    assert meta["recipe"] == "sft" and meta["parent"] is None
    distinct = len(set(chat_jsonl.read_text().splitlines()))  # short synthetic tasks repeat: dedup drops repeats
    assert meta["data"]["n_docs"] == distinct < 600
    assert meta["data"]["cleaning"]["exact_duplicates"] == 600 - distinct
    assert meta["data"]["n_target_tokens"] < meta["data"]["n_tokens"]
    assert "<|im_start|>" in (sft_model / "chat_template.jinja").read_text()


@pytest.mark.parametrize("merge", [False, True])
def test_lora_adapter_loads_in_peft_and_changes_the_output(tmp_path, sft_model, chat_jsonl, merge):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = {"recipe": "lora", "model": {"base": str(sft_model)}, "data": {"train": str(chat_jsonl)},
            "hyperparameters": {"steps": 8, "batch_size": 8, "seq_len": 128, "lr": 1e-2, "warmup_steps": 1},
            "lora": {"r": 4, "alpha": 8}, "merge_lora": merge, "output_dir": str(tmp_path / "lora")}
    code, events = run_inprocess(tmp_path, spec)
    assert code == 0, final_status(events)
    out = Path(spec["output_dir"])
    names = {p.name for p in out.iterdir()}
    meta = json.loads((out / "llmsvc.json").read_text())
    assert meta["parent"] == str(sft_model) and meta["metrics"]["trainable_fraction"] < 0.2
    tok = AutoTokenizer.from_pretrained(out)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(sft_model), tok)
    if merge:
        assert {"config.json", "model.safetensors"} <= names and "adapter_config.json" not in names
        tuned = AutoModelForCausalLM.from_pretrained(out)
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names and "model.safetensors" not in names
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft_model)
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_model), out)
    assert (_logits(tuned, tok) - base_logits).abs().max() > 1e-3


def test_dpo_loss_is_log2_at_the_start_and_prefers_the_chosen_answer(sft_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.chat import Preference, encode_preference

    tok = AutoTokenizer.from_pretrained(sft_model)
    policy = AutoModelForCausalLM.from_pretrained(sft_model)
    loss_fn = DPOLoss(AutoModelForCausalLM.from_pretrained(sft_model), beta=0.1)
    (c, cm), (r, rm) = encode_preference(tok, Preference([{"role": "user", "content": "Repeat: red"}], "red", "blue"))
    width = max(len(c), len(r))
    ids = torch.tensor([c + [0] * (width - len(c)), r + [0] * (width - len(r))])
    mask = torch.tensor([cm + [0] * (width - len(cm)), rm + [0] * (width - len(rm))])
    loss, _ = loss_fn(policy, {"input_ids": ids, "answer_mask": mask})
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: margin 0
    loss.backward()
    with torch.no_grad():  # one SGD step along the DPO gradient raises log p(chosen) - log p(rejected)
        before = sequence_logps(policy, ids, mask)
        for p in policy.parameters():
            p -= 0.05 * p.grad
        after = sequence_logps(policy, ids, mask)
    assert (after[0] - after[1]) > (before[0] - before[1])


def test_dpo_recipe_raises_the_margin_of_chosen_over_rejected_answers(tmp_path, sft_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for i, (_, prompt, answer) in enumerate(synthetic.examples(64, seed=9, tasks=["copy", "reverse"])):
            wrong = answer[::-1] if answer[::-1] != answer else answer + "x"
            if i % 2:  # both formats the recipe accepts
                f.write(json.dumps({"prompt": prompt, "chosen": answer, "rejected": wrong}) + "\n")
            else:
                f.write(json.dumps({"input": {"messages": [{"role": "user", "content": prompt}]},
                                    "preferred_output": [{"role": "assistant", "content": answer}],
                                    "non_preferred_output": [{"role": "assistant", "content": wrong}]}) + "\n")
    spec = {"recipe": "dpo", "model": {"base": str(sft_model)}, "data": {"train": str(pairs)},
            "hyperparameters": {"steps": 10, "batch_size": 8, "seq_len": 96, "lr": 2e-3, "warmup_steps": 1,
                                "dpo_beta": 0.1}, "output_dir": str(tmp_path / "dpo")}
    code, events = run_inprocess(tmp_path, spec)
    assert code == 0, final_status(events)
    metrics = [e for e in events if e["type"] == "metrics"]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # the first step starts at the reference
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[-1]["reward_accuracy"] > 0.5
    assert not Path(spec["output_dir"]).with_name("dpo.work").exists()  # prepared data is removed after the job

    from trainer.data.chat import Preference, encode_preference

    tok = AutoTokenizer.from_pretrained(spec["output_dir"])

    def margin(model_dir) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        total = 0.0
        for _, prompt, answer in synthetic.examples(16, seed=9, tasks=["copy", "reverse"]):
            wrong = answer[::-1] if answer[::-1] != answer else answer + "x"
            (c, cm), (r, rm) = encode_preference(tok, Preference([{"role": "user", "content": prompt}], answer, wrong))
            lp = [sequence_logps(model, torch.tensor([x]), torch.tensor([m])).item() for x, m in ((c, cm), (r, rm))]
            total += lp[0] - lp[1]
        return total

    with torch.no_grad():
        assert margin(spec["output_dir"]) > margin(sft_model)
