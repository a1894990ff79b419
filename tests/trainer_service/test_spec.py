"""From an OpenAI fine-tuning request to the trainer's SPEC.json, and the does-it-fit estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from services.trainer.memory import GIB, fit_problem, param_count
from services.trainer.spec import (
    JobPaths,
    SpecError,
    build_spec,
    check_extra,
    choose_recipe,
    resolve_hyperparameters,
    spec_json,
    trainer_hyperparameters,
)
from trainer.spec import Spec, parse_spec

LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
             "tie_word_embeddings": False}


@pytest.mark.parametrize("method,extra,recipe", [
    ({}, {}, "sft"),
    ({"type": "supervised"}, {"lora": {"r": 4}}, "lora"),
    ({"type": "dpo"}, {}, "dpo"),
    ({"type": "supervised"}, {"recipe": "pretrain"}, "pretrain"),
])
def test_recipe_from_method_and_extensions(method, extra, recipe):
    assert choose_recipe(method, extra) == recipe


@pytest.mark.parametrize("method,extra,param", [
    ({}, {"recipe": "rlhf"}, "recipe"),
    ({"type": "reinforcement"}, {}, "method.type"),
])
def test_unknown_recipes_are_refused(method, extra, param):
    with pytest.raises(SpecError) as err:
        choose_recipe(method, extra)
    assert err.value.param == param


def test_openai_hyperparameters_become_steps_and_lr():
    h = resolve_hyperparameters({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}, {}, "sft",
                                examples=10, seed=7)
    assert h["steps"] == 5 and h["lr"] == pytest.approx(0.5e-4) and h["seed"] == 7
    # The method's nested hyperparameters win over the legacy top-level ones; ours pass through.
    h = resolve_hyperparameters({"n_epochs": 9},
                                {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
                                "dpo", examples=8, seed=0)
    assert h["beta"] == 0.2 and h["n_epochs"] == 1 and h["steps"] == 2
    h = resolve_hyperparameters({"steps": 3, "lr": 1e-3, "seq_len": 64}, {}, "sft", examples=None, seed=0)
    assert (h["steps"], h["lr"], h["seq_len"]) == (3, 1e-3, 64)


def test_tiny_chat_defaults_to_the_recipes_tuned_learning_rate():
    from trainer.spec import TINY_CHAT_HYPERPARAMETERS

    h = resolve_hyperparameters({}, {}, "tiny-chat", examples=None, seed=0)
    assert h["lr"] == TINY_CHAT_HYPERPARAMETERS["lr"]
    assert h["muon_lr"] == TINY_CHAT_HYPERPARAMETERS["muon_lr"]
    assert h["muon_attention_lr"] == TINY_CHAT_HYPERPARAMETERS["muon_attention_lr"]
    h = resolve_hyperparameters({"learning_rate_multiplier": 0.5}, {}, "tiny-chat", examples=None, seed=0)
    assert h["lr"] == pytest.approx(0.5 * TINY_CHAT_HYPERPARAMETERS["lr"])
    assert h["muon_lr"] == pytest.approx(0.5 * TINY_CHAT_HYPERPARAMETERS["muon_lr"])  # Muon's matrices too
    assert h["muon_attention_lr"] == pytest.approx(0.5 * TINY_CHAT_HYPERPARAMETERS["muon_attention_lr"])
    assert trainer_hyperparameters(h)["muon_lr"] == h["muon_lr"]
    assert trainer_hyperparameters(h)["muon_attention_lr"] == h["muon_attention_lr"]
    assert "muon_lr" not in resolve_hyperparameters({}, {}, "sft", examples=None, seed=0)  # AdamW recipes
    for key in ("muon_lr", "muon_attention_lr"):  # a rate an AdamW recipe would ignore is refused, not dropped
        with pytest.raises(SpecError, match=f"hyperparameters.{key} applies only to the 'tiny-chat' recipe") as e:
            resolve_hyperparameters({key: 0.01}, {}, "sft", examples=None, seed=0)
        assert e.value.param == f"hyperparameters.{key}"


def test_steps_wait_for_the_example_count_when_unknown():
    h = resolve_hyperparameters({}, {}, "sft", examples=None, seed=0)
    assert h["steps"] is None and h["warmup_steps"] is None


@pytest.mark.parametrize("hyper,param", [
    ({"n_epochs": "three"}, "hyperparameters.n_epochs"),
    ({"batch_size": 0}, "hyperparameters.batch_size"),
    ({"batch_size": 2.5}, "hyperparameters.batch_size"),
    ({"learning_rate": 1e-4}, "hyperparameters"),
])
def test_bad_hyperparameters_name_the_field(hyper, param):
    with pytest.raises(SpecError) as err:
        resolve_hyperparameters(hyper, {}, "sft", examples=10, seed=0)
    assert err.value.param == param


def test_extensions_are_checked():
    with pytest.raises(SpecError, match="Unknown parameter"):
        check_extra({"gpus": 8})
    with pytest.raises(SpecError, match="resources.nodes"):
        check_extra({"resources": {"nodes": 0}})


@pytest.mark.parametrize("recipe,method,extra", [
    ("sft", {}, {}),
    ("lora", {}, {"lora": {"r": 4, "alpha": 8}, "merge_lora": True}),
    ("dpo", {"type": "dpo"}, {}),
    ("pretrain", {}, {}),
])
def test_the_spec_is_one_the_trainer_accepts(recipe, method, extra, tmp_path):
    """The contract with trainer/spec.py, whose models forbid unknown keys: the control plane builds the job's
    typed Spec, and the SPEC.json it writes reads back as the same."""
    h = resolve_hyperparameters({"n_epochs": 1, "seq_len": 64}, method, recipe, examples=12, seed=1)
    spec = build_spec(recipe=recipe, model={"base": str(tmp_path / "base")}, train=str(tmp_path / "t.jsonl"),
                      validation=None, hparams=h, extra=extra, paths=JobPaths(tmp_path / "job"), name="ft")
    assert isinstance(spec, Spec)
    parsed = parse_spec(json.loads(spec_json(spec)))
    assert parsed == spec
    assert parsed.resume and parsed.hyperparameters.steps == 3 and parsed.name == "ft"
    assert parsed.checkpoint_dir == str(tmp_path / "job" / "checkpoints")
    if recipe == "lora":
        assert parsed.lora.r == 4 and parsed.merge_lora
    if recipe == "dpo":
        assert parsed.hyperparameters.dpo_beta == 0.1


@pytest.mark.parametrize("recipe,model,hyper,extra,param", [
    ("lora", {"preset": "tiny"}, {}, {"lora": {"r": 4}}, "model"),  # an adapter needs a trained base
    ("dpo", {"preset": "tiny"}, {}, {}, "model"),
    ("lora", {"base": "/m"}, {}, {"lora": {"rank": 4}}, "lora.rank"),  # the job's LoraSpec forbids unknown keys
    ("lora", {"base": "/m"}, {}, {"lora": {"r": 0}}, "lora.r"),
    ("lora", {"base": "/m"}, {}, {"lora": {"dropout": 1.5}}, "lora.dropout"),
    ("sft", {"base": "/m"}, {"seq_len": 4}, {}, "hyperparameters.seq_len"),  # the job's minimum is 8
])
def test_a_spec_the_job_would_refuse_names_the_requests_field(recipe, model, hyper, extra, param, tmp_path):
    """What ``trainer.run`` would refuse at start-up is refused where the spec is built (at create), with the
    field of the request."""
    method = {"type": "dpo"} if recipe == "dpo" else {}
    h = resolve_hyperparameters(hyper, method, recipe, examples=12, seed=1)
    with pytest.raises(SpecError) as err:
        build_spec(recipe=recipe, model=model, train="/t.jsonl", validation=None, hparams=h, extra=extra,
                   paths=JobPaths(tmp_path), name="ft")
    assert err.value.param == param
    assert param.split(".")[-1] in str(err.value)


def test_param_count_matches_the_weights(default_model: Path):
    config = json.loads((default_model / "config.json").read_text())
    with safe_open(default_model / "model.safetensors", "pt") as f:
        actual = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert param_count(config) == actual


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_an_8b_full_fine_tune_does_not_fit_a_laptop_but_a_tiny_model_does(default_model: Path):
    hp = {"batch_size": 4, "seq_len": 512}
    problem = fit_problem(LLAMA3_8B, recipe="sft", hparams=hp, budget_bytes=16 * GIB, processes=1, gpu=False)
    assert problem and "8030M parameters" in problem and "16.0 GiB is available" in problem
    tiny = json.loads((default_model / "config.json").read_text())
    assert fit_problem(tiny, recipe="sft", hparams=hp, budget_bytes=16 * GIB, processes=1, gpu=False) is None
    # On 8 GPUs of 80 GiB, FSDP shards the 8B model's states: it fits.
    assert fit_problem(LLAMA3_8B, recipe="sft", hparams=hp, budget_bytes=80 * GIB, processes=8, gpu=True,
                       shards=8) is None
