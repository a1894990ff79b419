"""From an OpenAI fine-tuning request to the trainer's SPEC.json.

OpenAI's request names a ``method`` (supervised or dpo) and three
hyperparameters (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``,
each a number or ``"auto"``). We accept those and our own names (``steps``,
``lr``, ``seq_len``, ``warmup_steps``, ``grad_accum``, ``beta``), and extensions
in the body: ``recipe``, ``lora``, ``merge_lora``, ``checkpoint_every``,
``resources`` (``nodes``, ``nproc_per_node``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from trainer.spec import RECIPES, TINY_CHAT_HYPERPARAMETERS, Spec, SpecError, parse_spec

__all__ = ["RECIPES", "SpecError"]  # the job's own: one recipe list, one error class
BASE_LR = {"pretrain": 3e-4, "sft": 1e-4, "lora": 2e-4, "dpo": 5e-6, "tiny-chat": TINY_CHAT_HYPERPARAMETERS["lr"]}
"""Learning rate that ``learning_rate_multiplier`` scales, per recipe (tiny-chat's is the recipe's own tuned one)."""
OPENAI_HPARAMS = {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"}
OUR_HPARAMS = {"steps", "lr", "seq_len", "warmup_steps", "grad_accum", "muon_lr", "muon_attention_lr"}
EXTRA_KEYS = {"recipe", "lora", "merge_lora", "checkpoint_every", "keep_checkpoints", "resources", "evals"}
DEFAULT_EPOCHS, DEFAULT_BATCH = 3, 4
DEFAULT_KEEP = 3
"""Checkpoints a job keeps (OpenAI keeps the last three)."""


def choose_recipe(method: dict, extra: dict) -> str:
    kind = (method or {}).get("type") or "supervised"
    if recipe := extra.get("recipe"):
        if recipe not in RECIPES:
            raise SpecError(f"Unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}.", "recipe")
        return recipe
    if kind == "supervised":
        return "lora" if extra.get("lora") else "sft"
    if kind == "dpo":
        return "dpo"
    raise SpecError(f"Unsupported method type {kind!r}; use 'supervised' or 'dpo'.", "method.type")


def _requested(hyperparameters: dict, method: dict) -> dict:
    """OpenAI accepts hyperparameters at the top level (legacy) or under ``method.<type>``."""
    merged = dict(hyperparameters or {})
    kind = (method or {}).get("type")
    if kind and isinstance(method.get(kind), dict):
        merged.update(method[kind].get("hyperparameters") or {})
    unknown = set(merged) - OPENAI_HPARAMS - OUR_HPARAMS
    if unknown:
        raise SpecError(f"Unknown hyperparameter(s): {', '.join(sorted(unknown))}.", "hyperparameters")
    return merged


def _number(h: dict, key: str, kind: type, default, *, minimum: float = 0):
    value = h.get(key, "auto")
    if value in ("auto", None):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise SpecError(f"hyperparameters.{key} must be {'an integer' if kind is int else 'a number'} or 'auto'.",
                        f"hyperparameters.{key}")
    if value <= minimum:
        raise SpecError(f"hyperparameters.{key} must be greater than {minimum}.", f"hyperparameters.{key}")
    return kind(value)


def resolve_hyperparameters(hyperparameters: dict, method: dict, recipe: str, examples: int | None,
                            seed: int) -> dict:
    """The numbers the trainer runs with, OpenAI's names included so the job object shows them.

    With ``examples`` unknown (a path not yet validated) and no explicit ``steps``, ``steps`` and
    ``warmup_steps`` stay None until :func:`complete_steps` runs on the validated count.
    """
    h = _requested(hyperparameters, method)
    batch = _number(h, "batch_size", int, min(DEFAULT_BATCH, max(1, examples or DEFAULT_BATCH)))
    mult = _number(h, "learning_rate_multiplier", float, 1.0)
    out = {
        "n_epochs": _number(h, "n_epochs", int, DEFAULT_EPOCHS), "batch_size": batch,
        "learning_rate_multiplier": mult, "grad_accum": _number(h, "grad_accum", int, 1),
        "steps": _number(h, "steps", int, None), "warmup_steps": _number(h, "warmup_steps", int, None, minimum=-1),
        "lr": _number(h, "lr", float, BASE_LR[recipe] * mult), "seed": seed,
    }
    if "seq_len" in h:
        out["seq_len"] = _number(h, "seq_len", int, None)
    if recipe == "dpo":
        out["beta"] = _number(h, "beta", float, 0.1)
    muon = sorted(k for k in ("muon_attention_lr", "muon_lr") if h.get(k, "auto") not in ("auto", None))
    if muon and recipe != "tiny-chat":  # the other recipes train with AdamW: a Muon rate would do nothing
        raise SpecError(f"hyperparameters.{muon[-1]} applies only to the 'tiny-chat' recipe, which trains with Muon; "
                        f"the {recipe!r} recipe trains with AdamW at 'lr'.", f"hyperparameters.{muon[-1]}")
    if recipe == "tiny-chat":  # its matrices train with Muon, whose rate the multiplier scales too
        out["muon_lr"] = _number(h, "muon_lr", float, TINY_CHAT_HYPERPARAMETERS["muon_lr"] * mult)
        out["muon_attention_lr"] = _number(h, "muon_attention_lr", float,
                                           TINY_CHAT_HYPERPARAMETERS["muon_attention_lr"] * mult)
    return complete_steps(out, examples) if examples else out


def complete_steps(hparams: dict, examples: int) -> dict:
    """Fill in ``steps`` from epochs over ``examples``, and a warmup of 10% of them (at most 100)."""
    out = dict(hparams)
    if out["steps"] is None:
        out["steps"] = max(1, math.ceil(examples * out["n_epochs"] / (out["batch_size"] * out["grad_accum"])))
    if out["warmup_steps"] is None:
        out["warmup_steps"] = min(100, out["steps"] // 10)
    return out


def _whole(value, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise SpecError(f"{param} must be a positive integer.", param)
    return int(value)


def check_extra(extra: dict) -> dict:
    unknown = set(extra) - EXTRA_KEYS
    if unknown:
        raise SpecError(f"Unknown parameter(s): {', '.join(sorted(unknown))}.", sorted(unknown)[0])
    # Numbers arrive as floats (protobuf Struct); whole ones are what we take.
    for key in ("checkpoint_every", "keep_checkpoints"):
        if key in extra:
            extra[key] = _whole(extra[key], key)
    res = extra.get("resources") or {}
    for key in ("nodes", "nproc_per_node"):
        if key in res:
            res[key] = _whole(res[key], f"resources.{key}")
    if "lora" in extra and not isinstance(extra["lora"], (bool, dict)):
        raise SpecError("lora must be true or an object such as {\"r\": 8, \"alpha\": 16}.", "lora")
    if "evals" in extra:
        from .evals import check_evals

        extra["evals"] = check_evals(extra["evals"])
    return extra


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


def trainer_hyperparameters(hparams: dict) -> dict:
    """The trainer's names: OpenAI's n_epochs and multiplier are already folded into steps and lr."""
    out = {k: v for k, v in hparams.items() if k in OUR_HPARAMS | {"batch_size", "seed"} and v is not None}
    if "beta" in hparams:
        out["dpo_beta"] = hparams["beta"]
    return out


_REQUEST_PARAM = {"model": "model", "model.base": "model", "model.preset": "model", "data.train": "training_file",
                  "data.validation": "validation_file", "hyperparameters.dpo_beta": "hyperparameters.beta"}
"""The request's field for a spec field where their names differ."""


def build_spec(*, recipe: str, model: dict, train: str, validation: str | None, hparams: dict, extra: dict,
               paths: JobPaths, name: str) -> Spec:
    """The job's typed spec (trainer/spec.py: what ``trainer.run`` reads as SPEC.json), validated here, so a
    request the job would refuse is refused at create; the :class:`SpecError` names the request's field."""
    steps = hparams["steps"]
    raw = {
        "recipe": recipe,
        "model": model,
        "data": {"train": train, **({"validation": validation} if validation else {})},
        "hyperparameters": trainer_hyperparameters(hparams),
        "output_dir": str(paths.output),
        "checkpoint_dir": str(paths.checkpoints),
        "checkpoint_every": int(extra.get("checkpoint_every") or max(1, min(500, steps // 4))),
        "keep_checkpoints": int(extra.get("keep_checkpoints") or DEFAULT_KEEP),
        # A restarted job (pod restart, service restart) continues from its last checkpoint.
        "resume": True,
        "name": name,
    }
    if recipe == "lora":
        raw["lora"] = extra["lora"] if isinstance(extra.get("lora"), dict) else {}
        raw["merge_lora"] = bool(extra.get("merge_lora", False))
    try:
        return parse_spec(raw)
    except SpecError as exc:
        param = exc.param or ""
        raise SpecError(str(exc).removeprefix("invalid spec: "), _REQUEST_PARAM.get(param, param) or None) from None


def spec_json(spec: Spec) -> str:
    """SPEC.json: the fields the control plane set (the job fills in its own defaults)."""
    return spec.model_dump_json(indent=2, exclude_unset=True)
