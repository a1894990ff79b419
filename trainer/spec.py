"""SPEC.json: the job description the control plane hands to ``python -m trainer.run``.

Every model here forbids unknown keys, so a typo in a spec fails at start-up
with the field's path instead of being silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .data.synthetic import TOKEN_WORDS

RECIPES = ("pretrain", "sft", "lora", "dpo", "tiny-chat")
"""Every recipe, the one list: the control plane, the CLI and ``trainer.recipes`` take theirs from here."""
Recipe = Literal[RECIPES]


class SpecError(ValueError):
    """The spec cannot be run as written; the message says which field and why (``param``: the request's
    field, where the control plane knows it)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    preset: str | None = None
    """Name from :data:`trainer.model.PRESETS`: a freshly initialised Llama (its tokenizer is trained on the data)."""
    base: str | None = None
    """Path of a Hugging Face model directory to start from (its tokenizer and chat template are reused)."""

    @model_validator(mode="after")
    def _one_of(self) -> ModelSpec:
        if (self.preset is None) == (self.base is None):
            raise ValueError("give exactly one of model.preset or model.base")
        return self


class DataSpec(_Strict):
    train: str | None = None
    """Text file, folder of text files, JSONL file, or a Hugging Face dataset saved with ``save_to_disk``."""
    validation: str | None = None
    """Optional held-out data in the same format; gives ``eval_loss``."""
    text_field: str = "text"
    """Field holding the document in JSONL / dataset records (pretraining data)."""
    min_chars: int = 16
    """Quality filter: documents shorter than this are dropped."""
    max_chars: int = 200_000
    """Quality filter: documents longer than this are dropped."""
    max_repetition: float = 0.3
    """Quality filter: drop documents whose fraction of duplicated lines or repeated 3-grams exceeds this."""
    max_symbol_ratio: float = 0.3
    """Quality filter: drop documents where non-alphanumeric, non-space characters exceed this fraction."""
    filters: bool = True
    """Apply the quality filters (text data only)."""
    dedup: bool = True
    """Drop exact duplicates (by normalised-content hash)."""
    near_dedup: bool = True
    """Drop near-duplicates (MinHash LSH over word 5-grams)."""
    near_dup_threshold: float = Field(0.8, gt=0, le=1)
    """Estimated Jaccard similarity above which two documents count as near-duplicates."""
    scrub_pii: bool = True
    """Replace emails, phone numbers and IP addresses with placeholders."""
    tokenizer: Literal["bpe", "bytes"] = "bpe"
    """Tokenizer for a model trained from scratch (``model.preset``): BPE trained on this data, or one token a byte."""
    vocab_size: int = Field(4096, ge=300)
    """BPE vocabulary size when a tokenizer is trained."""
    extra_tokens: list[str] = []
    """Whole strings the ``bytes`` tokenizer keeps as one token each (chat roles, fixed instruction words)."""


class Hyperparameters(_Strict):
    steps: int = Field(100, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(8, ge=1)
    """Global sequences per optimizer step, over all ranks and accumulation micro-steps.
    Being global, the same spec trains the same model on 1 or N processes."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimizer step on each rank."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up from 0 to ``lr``."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW decay for matrices; norms and biases are never decayed."""
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: Literal["adamw", "muon"] = "adamw"
    """``muon``: the decoder layers' matrices are updated by Muon (``trainer.optim.Muon``), everything else
    by AdamW at ``lr``. One process or DDP only: Muon needs each whole matrix."""
    muon_lr: float = Field(0.02, gt=0)
    """Peak learning rate of the Muon matrices (the same warm-up and cosine as ``lr``)."""
    muon_attention_lr: float | None = Field(None, gt=0)
    """Peak Muon rate of the attention projections (``q``, ``k``, ``v``, ``o``) when it differs from
    ``muon_lr`` (the MLPs' rate); unset, every decoder matrix moves at ``muon_lr``."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global grad norm to this (0 turns clipping off)."""
    seq_len: int = Field(256, ge=8)
    """Tokens per training sequence."""
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype: ``auto`` is bf16 on GPU and fp32 on CPU. Master weights stay fp32."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How several torchrun processes share the work (ignored for one process)."""
    activation_checkpointing: bool = False
    compile: bool = False
    """torch.compile each decoder layer."""
    dpo_beta: float = Field(0.1, gt=0)
    """DPO temperature: how far the policy may move from the reference."""
    log_every: int = Field(1, ge=1)
    eval_batches: int = Field(8, ge=1)
    """Batches of validation data for ``eval_loss`` at the end."""


class LoraSpec(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TinyChatSpec(_Strict):
    examples: int = Field(150_000, ge=100)
    """Synthetic conversations to generate for training."""
    eval_per_task: int = Field(40, ge=0)
    """Held-out prompts per task for the final greedy-decoding accuracy."""
    tasks: list[str] | None = None
    """Subset of task names (default: all)."""
    induction_steps: int = Field(300, ge=0)
    """The first steps train on copying drills only (at most a quarter of the steps): the induction heads
    they form are what the table look-up needs (``trainer.data.synthetic.induction_windows``)."""


class Spec(_Strict):
    recipe: Recipe
    model: ModelSpec | None = None
    """Defaults to the ``tiny`` preset for ``tiny-chat``; required otherwise."""
    data: DataSpec = DataSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    output_dir: str
    """Where the Hugging Face model directory appears (atomically) when the job succeeds."""
    checkpoint_dir: str | None = None
    """Where resumable checkpoints go; none are written without it."""
    checkpoint_every: int = Field(0, ge=0)
    """Save a checkpoint every N optimizer steps (0: only on cancellation)."""
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = True
    """Continue from the newest complete checkpoint in ``checkpoint_dir`` if there is one."""
    lora: LoraSpec | None = None
    """Adapter settings for the ``lora`` recipe (defaults apply when omitted)."""
    merge_lora: bool = False
    """Merge the adapter into the base weights and write a full model instead of an adapter."""
    tiny_chat: TinyChatSpec = TinyChatSpec()
    name: str | None = None
    """Model name recorded in llmsvc.json; defaults to the output directory's name."""

    @model_validator(mode="after")
    def _recipe_needs(self) -> Spec:
        asked = set(self.hyperparameters.model_fields_set)  # what the spec set, before a recipe fills its own
        if self.recipe == "tiny-chat":
            if self.model is None:
                self.model = ModelSpec(preset="tiny")
            _fill_unset(self.data, TINY_CHAT_DATA)
            _fill_unset(self.hyperparameters, TINY_CHAT_HYPERPARAMETERS)
        elif self.model is None:
            raise SpecError(f"recipe {self.recipe!r} needs 'model' ({{'preset': ...}} or {{'base': ...}})", "model")
        elif self.data.train is None:
            raise SpecError(f"recipe {self.recipe!r} needs 'data.train'", "data.train")
        elif self.recipe in ("lora", "dpo") and self.model.base is None:
            raise SpecError(f"recipe {self.recipe!r} starts from a trained model: give 'model.base'", "model.base")
        _optimizer_settings_agree(self.hyperparameters, asked, self.recipe)
        return self

    @property
    def model_name(self) -> str:
        return self.name or Path(self.output_dir).name


TINY_CHAT_DATA = {"tokenizer": "bytes", "filters": False, "dedup": False, "near_dedup": False, "scrub_pii": False,
                  "extra_tokens": list(TOKEN_WORDS)}
"""Synthetic data is clean by construction (and its digit lists would look like phone numbers to the PII
scrubber). The extra tokens are the chat roles and the tasks' fixed words: about a third fewer tokens an example."""
TINY_CHAT_HYPERPARAMETERS = {"steps": 1400, "batch_size": 16, "lr": 3e-3, "warmup_steps": 50, "seq_len": 256,
                             "weight_decay": 0.1, "log_every": 20, "optimizer": "muon", "muon_lr": 0.01,
                             "muon_attention_lr": 0.005}
"""Tuned for under ten minutes on two CPU cores (see docs/benchmarks.md). With Muon, 600 task steps gave 93.9%
held-out where AdamW's gave 15.8% (docs/benchmarks.md, session 17), so the build is 400 steps shorter. At
Muon's usual 0.02 one seed in three lost the drills' induction heads to the tasks (the look-up at 50%); at
0.01 two builds in ten still did (session 18). With the attention projections at half the MLPs' rate every
task of each of eight seeds is at 95% or more, the look-up at 100% (session 19)."""


def _optimizer_settings_agree(hp: Hyperparameters, asked: set[str], recipe: str) -> None:
    """Checked once the recipe's own settings are in (tiny-chat's optimizer is Muon unless the spec says
    otherwise): Muon needs whole matrices, and a Muon rate the spec asks for must have Muon to use it."""
    if hp.optimizer == "muon" and hp.parallel == "fsdp":
        raise SpecError("optimizer 'muon' needs whole matrices on each rank: use parallel 'ddp'",
                        "hyperparameters.parallel")
    for key in ("muon_lr", "muon_attention_lr"):
        if hp.optimizer != "muon" and key in asked:
            raise SpecError(f"only optimizer 'muon' uses it, and recipe {recipe!r} here trains with "
                            f"{hp.optimizer!r} at 'lr': set hyperparameters.optimizer to 'muon', or leave {key} out",
                            f"hyperparameters.{key}")


def _fill_unset(model: BaseModel, defaults: dict) -> None:
    for key, value in defaults.items():
        if key not in model.model_fields_set:
            setattr(model, key, value)


def load_spec(path: str | Path) -> Spec:
    """Read and validate SPEC.json, turning every problem into one readable :class:`SpecError`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec file {path} is not valid JSON: {exc}") from None
    return parse_spec(raw)


def parse_spec(raw: dict) -> Spec:
    """The typed spec; a :class:`SpecError` naming every problem, whose ``param`` is the first one's field
    (``lora.r``, ``hyperparameters.seq_len``, ``model.base``…)."""
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        lines, params = [], []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            where = ".".join(str(p) for p in err["loc"]) or getattr(cause, "param", None) or "spec"
            params.append(getattr(cause, "param", None) or ".".join(str(p) for p in err["loc"]) or None)
            lines.append(f"{where}: {cause if isinstance(cause, SpecError) else err['msg']}")
        raise SpecError("invalid spec: " + "; ".join(lines), params[0] if params else None) from None
