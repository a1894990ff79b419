"""Spec validation, presets, parameter counts, the memory check, the schedule and the sample order."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from trainer.batches import Order, micro_slices
from trainer.model import PRESETS, ModelTooLarge, check_fits, count_params, llama_config
from trainer.optim import build_optimizer, lr_factor
from trainer.spec import TINY_CHAT_HYPERPARAMETERS, Hyperparameters, SpecError, parse_spec


def test_unknown_recipe_and_typos_are_clear_errors():
    with pytest.raises(SpecError, match=r"recipe: Input should be 'pretrain', 'sft', 'lora', 'dpo' or 'tiny-chat'"):
        parse_spec({"recipe": "rlhf", "output_dir": "/x"})
    with pytest.raises(SpecError, match=r"hyperparameters.setps: Extra inputs are not permitted"):
        parse_spec({"recipe": "tiny-chat", "output_dir": "/x", "hyperparameters": {"setps": 3}})
    with pytest.raises(SpecError, match="needs 'data.train'"):
        parse_spec({"recipe": "sft", "model": {"preset": "tiny"}, "output_dir": "/x"})
    with pytest.raises(SpecError, match="give 'model.base'"):
        parse_spec({"recipe": "lora", "model": {"preset": "tiny"}, "data": {"train": "d"}, "output_dir": "/x"})
    with pytest.raises(SpecError, match="exactly one of model.preset or model.base"):
        parse_spec({"recipe": "sft", "model": {}, "data": {"train": "d"}, "output_dir": "/x"})


def test_tiny_chat_fills_only_what_the_spec_leaves_unset():
    spec = parse_spec({"recipe": "tiny-chat", "output_dir": "/x", "hyperparameters": {"steps": 7}})
    assert spec.model.preset == "tiny" and spec.data.tokenizer == "bytes" and not spec.data.scrub_pii
    assert spec.hyperparameters.steps == 7
    assert spec.hyperparameters.lr != Hyperparameters().lr  # the tiny-chat default, not the generic one


@pytest.mark.parametrize("name", ["nano", "tiny", "small"])
def test_preset_parameter_count_matches_the_real_model(name):
    from transformers import LlamaForCausalLM

    cfg = llama_config(PRESETS[name], 512, bos=1, eos=[2], pad=0, seq_len=64)
    assert count_params(cfg) == sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())


def test_presets_use_head_dims_vllm_cpu_supports_and_valid_gqa():
    for name, p in PRESETS.items():
        assert p.dim % p.n_heads == 0 and p.dim // p.n_heads in (32, 64, 80, 96, 112, 128, 256), name
        assert p.n_heads % p.n_kv_heads == 0, name
    big = llama_config(PRESETS["8b"], 0, bos=1, eos=[2], pad=0, seq_len=64)
    assert 8.0e9 < count_params(big) < 8.1e9  # Llama 3 8B
    assert 1.2e9 < count_params(llama_config(PRESETS["1b"], 0, bos=1, eos=[2], pad=0, seq_len=64)) < 1.3e9


def test_memory_check_refuses_8b_on_this_machine_before_allocating():
    cfg = llama_config(PRESETS["8b"], 0, bos=1, eos=[2], pad=0, seq_len=256)
    with pytest.raises(ModelTooLarge, match=r"needs about \d[\d,.]* GiB .* only [\d,.]+ GiB is available"):
        check_fits(cfg, torch.device("cpu"), trainable_fraction=1.0, micro_batch=1, seq_len=256, world_size=1,
                   sharded=False, reference_copy=False)
    small = llama_config(PRESETS["nano"], 300, bos=1, eos=[2], pad=0, seq_len=64)
    assert check_fits(small, torch.device("cpu"), trainable_fraction=1.0, micro_batch=4, seq_len=64, world_size=1,
                      sharded=False, reference_copy=False) < 2**30


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_ten_percent():
    hp = Hyperparameters(steps=110, warmup_steps=10, lr=1.0)
    f = [lr_factor(s, hp) for s in range(110)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.55)  # halfway through the cosine: (1 + 0.1) / 2
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)) and lr_factor(110, hp) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_and_biases():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(PRESETS["nano"], 300, bos=1, eos=[2], pad=0, seq_len=64))
    opt = build_optimizer(model, Hyperparameters())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    norms = {id(p) for n, p in model.named_parameters() if "norm" in n}
    assert norms and norms == {id(p) for p in no_decay["params"]}
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_a_lead_in_comes_first_in_order_then_the_permuted_data():
    import numpy as np

    from trainer.batches import LeadInBatches, WindowBatches

    order = Order(50, seed=3, lead=16)
    assert order.samples(0, 16).tolist() == list(range(50, 66))  # the lead-in's 16, in order
    rest = order.samples(16, 50).tolist()
    assert sorted(rest) == list(range(50)) and rest == Order(50, seed=3).samples(0, 50).tolist()
    assert order.samples(10, 12).tolist() == list(range(60, 66)) + rest[:6]  # a batch across the boundary

    class Five:  # PackedData's interface: (tokens, mask, positions) of a window
        def __len__(self):
            return 5

        def get(self, i):
            return np.full(5, i), np.ones(5, dtype=np.int64), np.arange(5)

    lead = [(np.full(5, 100 + k), np.array([0, 0, 1, 1, 1]), np.arange(5)) for k in range(2)]
    batches = LeadInBatches(WindowBatches(Five()), lead)
    assert len(batches) == 5 and batches.lead_in == 2
    b = batches.collate(np.array([6, 3]))  # the lead-in's second window, then the data's fourth
    assert b["input_ids"][:, 0].tolist() == [101, 3]
    assert b["labels"][0].tolist() == [-100, 101, 101, 101] and b["n_targets"].item() == 3 + 4


def test_global_batch_is_the_same_samples_for_any_world_size_and_accumulation():
    order = Order(50, seed=3)
    for step in range(4):
        expected = order.samples(step * 8, 8).tolist()
        for world, accum in [(1, 1), (2, 1), (1, 4), (2, 2), (4, 2)]:
            got = []
            for rank in range(world):
                for start, n in micro_slices(step, 8, rank, world, accum):
                    got += order.samples(start, n).tolist()
            assert sorted(got) == sorted(expected), (world, accum)
    # An epoch is a permutation: the first 50 samples cover the data exactly once.
    assert sorted(order.samples(0, 50).tolist()) == list(range(50))


def test_uncompile_gives_the_blocks_back_their_eager_calls():
    """A compiled build generates its held-out answers eagerly: generation changes shape every token."""
    import torch

    from trainer.parallelize import uncompile

    block = torch.nn.Linear(4, 4)
    block.compile()
    assert block._compiled_call_impl is not None
    x = torch.ones(2, 4)
    assert uncompile(torch.nn.Sequential(block)) is not None and block._compiled_call_impl is None
    assert torch.equal(block(x), x @ block.weight.T + block.bias)


def test_orthogonalize_keeps_the_directions_and_evens_the_singular_values():
    from trainer.optim import orthogonalize

    torch.manual_seed(0)
    for shape in ((128, 384), (384, 128), (96, 128)):  # not square: a random square one has a singular value near 0
        g = torch.randn(shape) * torch.logspace(-1, 0, shape[1])  # columns from 0.1 to 1 in scale
        o = orthogonalize(g)
        s = torch.linalg.svdvals(o)
        assert o.shape == g.shape and 0.5 < s.min() and s.max() < 1.3, (shape, s.min(), s.max())
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), o.flatten(), dim=0) > 0.9


def test_muon_updates_the_layers_matrices_and_adamw_the_rest_and_resumes_exactly():
    from transformers import LlamaForCausalLM

    from trainer.optim import Muon

    def model_and_opt():
        torch.manual_seed(0)
        m = LlamaForCausalLM(llama_config(PRESETS["nano"], 300, bos=1, eos=[2], pad=0, seq_len=64))
        return m, build_optimizer(m, Hyperparameters(optimizer="muon", lr=3e-3, muon_lr=0.02))

    model, opt = model_and_opt()
    assert isinstance(opt, Muon)
    muon, other, norms = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon["muon"] and muon["lr"] == 0.02 and other["lr"] == norms["lr"] == 3e-3
    assert {names[id(p)].split(".")[-2] for p in muon["params"]} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert [names[id(p)] for p in other["params"]] == ["model.embed_tokens.weight"]  # tied with the LM head
    assert muon["weight_decay"] * muon["lr"] == pytest.approx(0.1 * 3e-3)  # AdamW's decay per step
    x = torch.randint(3, 300, (4, 33))

    def step(m, o):
        loss = m(input_ids=x, labels=x).loss
        loss.backward()
        o.step(), o.zero_grad()
        return loss.item()

    losses = [step(model, opt) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses  # it learns a fixed batch
    again, opt2 = model_and_opt()
    again.load_state_dict(model.state_dict())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a checkpoint file: no shared buffers
    assert step(again, opt2) == pytest.approx(step(model, opt), rel=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(model.parameters(), again.parameters(), strict=True)) == 0


def test_muon_attention_rate_moves_only_the_attention_projections():
    """``muon_attention_lr`` puts q/k/v/o in a group of their own at that rate, with AdamW's decay per step;
    the MLPs keep ``muon_lr``. One step of each optimizer from the same start and gradient: the MLPs move
    identically, each attention matrix by the ratio of the rates (Muon's step is its orthogonalised momentum
    times the rate, so the same gradient gives the same direction)."""
    from transformers import LlamaForCausalLM

    def one_step(**rates):
        torch.manual_seed(0)
        m = LlamaForCausalLM(llama_config(PRESETS["nano"], 300, bos=1, eos=[2], pad=0, seq_len=64))
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        opt = build_optimizer(m, Hyperparameters(optimizer="muon", lr=3e-3, weight_decay=0.0, **rates))
        x = torch.randint(3, 300, (4, 33))
        m(input_ids=x, labels=x).loss.backward()
        opt.step()
        return opt, {n: p.detach() - before[n] for n, p in m.named_parameters()}

    opt, split = one_step(muon_lr=0.02, muon_attention_lr=0.005)
    mlp, attention = (g for g in opt.param_groups if g.get("muon"))
    assert (mlp["lr"], attention["lr"]) == (0.02, 0.005)
    one_group, same = one_step(muon_lr=0.02)
    assert sum(g.get("muon", False) for g in one_group.param_groups) == 1  # unset: one group, as before
    for name, delta in split.items():
        if "self_attn" in name:
            torch.testing.assert_close(delta, same[name] * 0.25)
        elif "mlp" in name:
            torch.testing.assert_close(delta, same[name])


def test_muon_refuses_sharded_matrices():
    with pytest.raises(SpecError, match="optimizer 'muon' needs whole matrices on each rank"):
        parse_spec({"recipe": "tiny-chat", "output_dir": "/x",
                    "hyperparameters": {"optimizer": "muon", "parallel": "fsdp"}})
    # tiny-chat's own optimizer is Muon: the same refusal when the spec only asks for fsdp
    with pytest.raises(SpecError, match="optimizer 'muon' needs whole matrices on each rank") as e:
        parse_spec({"recipe": "tiny-chat", "output_dir": "/x", "hyperparameters": {"parallel": "fsdp"}})
    assert e.value.param == "hyperparameters.parallel"


def test_a_muon_rate_without_muon_is_refused_not_ignored():
    """An AdamW spec that sets ``muon_lr`` or ``muon_attention_lr`` would train as if it had not: refused,
    naming the field. The recipe's own Muon rates, filled in for tiny-chat, never count as asked for."""
    pretrain = {"recipe": "pretrain", "output_dir": "/x", "model": {"preset": "nano"}, "data": {"train": "/d"}}
    tiny = {"recipe": "tiny-chat", "output_dir": "/x"}
    for key in ("muon_lr", "muon_attention_lr"):
        with pytest.raises(SpecError, match=f"hyperparameters.{key}: only optimizer 'muon' uses it") as e:
            parse_spec({**pretrain, "hyperparameters": {key: 0.01}})
        assert e.value.param == f"hyperparameters.{key}"
        with pytest.raises(SpecError, match="recipe 'tiny-chat' here trains with 'adamw'") as e:
            parse_spec({**tiny, "hyperparameters": {"optimizer": "adamw", key: 0.01}})
        assert e.value.param == f"hyperparameters.{key}"
    hp = parse_spec({**pretrain, "hyperparameters": {"optimizer": "muon", "muon_attention_lr": 0.005}}).hyperparameters
    assert (hp.muon_lr, hp.muon_attention_lr) == (0.02, 0.005)
    hp = parse_spec({**tiny, "hyperparameters": {"optimizer": "adamw"}}).hyperparameters
    assert hp.optimizer == "adamw" and hp.muon_attention_lr == TINY_CHAT_HYPERPARAMETERS["muon_attention_lr"]


def test_a_lone_build_loads_torch_with_spinning_openmp_and_leaves_the_environment_as_it_was():
    """In a fresh interpreter, as ``llmsvc up`` calls it before its first-run build: the spin count is in the
    environment only while torch loads; children started afterwards do not inherit it, and a second call (torch
    already loaded) or a user's own GOMP_SPINCOUNT changes nothing."""
    import subprocess
    import sys

    code = ("import os, subprocess, sys, trainer\n"
            "first = trainer.claim_the_cores()\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"GOMP_SPINCOUNT\"))'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(first, 'torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'), child, trainer.claim_the_cores(),"
            " os.environ['OMP_WAIT_POLICY'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "True", "None", "None", "False", "PASSIVE"]
    env["GOMP_SPINCOUNT"] = "7"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False", "7", "7", "False", "PASSIVE"]


def test_muons_adamw_groups_step_as_torchs_adamw():
    """Muon carries its own AdamW for the embeddings and norms (one optimizer, one schedule, one checkpoint);
    it must move them exactly as ``torch.optim.AdamW`` would."""
    from trainer.optim import Muon

    torch.manual_seed(0)
    w = torch.randn(8, 5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    ours = Muon([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=3e-3)
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    start = w.detach().clone()
    theirs = torch.optim.AdamW([{"params": [w2], "weight_decay": 0.1}, {"params": [b2], "weight_decay": 0.0}],
                               lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    for step in range(5):
        g = torch.randn(8, 5), torch.randn(5)
        w.grad, b.grad, w2.grad, b2.grad = g[0], g[1], g[0].clone(), g[1].clone()
        ours.step(), theirs.step()
        assert torch.allclose(w, w2, atol=1e-7) and torch.allclose(b, b2, atol=1e-7), step
    assert (w - start).abs().min() > 0  # every weight moved: the comparison is not of two idle optimizers
