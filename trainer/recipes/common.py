"""What the recipes share: the job context, the setup a recipe returns, data and model loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..batches import Batches, WindowBatches
from ..data.pack import PackedData
from ..data.pipeline import Kind, Prepared, prepare, stage_counts
from ..data.sources import DataError
from ..data.tokenizer import special_ids
from ..events import EventSink
from ..loop import Objective
from ..model import build_model, check_fits, get_preset, llama_config, load_model
from ..objectives import lm_loss
from ..parallelize import Dist
from ..spec import Spec


@dataclass(kw_only=True, slots=True)
class JobContext:
    spec: Spec
    d: Dist
    sink: EventSink
    work_dir: Path
    """Prepared data and trained tokenizer (kept beside the checkpoints, so a resumed job reuses them)."""
    show_progress: bool = True


@dataclass(kw_only=True, slots=True)
class Setup:
    model: torch.nn.Module
    """The model to train (not yet parallelized)."""
    tokenizer: Any
    train: Batches
    validation: Batches | None
    objective: Objective
    data: dict
    """Manifest of the prepared training data (counts, ``data_hash``)."""
    parent: str | None
    """The base model this one starts from (None when trained from scratch)."""
    export: Callable[[torch.nn.Module, dict, Path], None]
    """Rank 0 writes the weights: (model, full state dict, folder)."""
    after_training: Callable[[torch.nn.Module], dict] | None = None
    """Extra final metrics computed on rank 0 from the trained model (e.g. task accuracy)."""
    trainable_fraction: float = 1.0
    extra_llmsvc: dict = field(default_factory=dict)


def prepare_data(ctx: JobContext, path: str, kind: Kind, folder: str, tokenizer=None) -> Prepared:
    """Rank 0 prepares (or reuses) the data; the other ranks wait for it, then open what it wrote."""
    spec, d = ctx.spec, ctx.d
    prepared = prepare(path, spec.data, kind, ctx.work_dir / folder, seq_len=spec.hyperparameters.seq_len,
                       tokenizer=tokenizer, show=ctx.show_progress and d.is_main, wait=not d.is_main)
    if d.is_main:
        counts = stage_counts(prepared.manifest)
        ctx.sink.message(f"{folder} data: {dict(counts)}; {prepared.manifest['n_docs']} docs, "
                         f"{prepared.manifest.get('n_tokens', 0)} tokens, hash {prepared.data_hash[:12]}")
    return prepared


def base_tokenizer(base: str, kind: Kind):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base)
    except OSError as exc:
        raise DataError(f"cannot load the tokenizer of base model {base}: {exc}") from None
    if kind != "text" and not tok.chat_template:
        raise DataError(f"base model {base} has no chat template, which {kind} data needs")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def window_batches(prepared: Prepared, seq_len: int, what: str) -> WindowBatches:
    data = PackedData(prepared.folder, seq_len + 1)
    if len(data) == 0:
        raise DataError(f"{what} data has {prepared.manifest['n_tokens']} tokens: too few for one sequence of "
                        f"{seq_len + 1}; add data or lower hyperparameters.seq_len")
    return WindowBatches(data)


def micro_batch(ctx: JobContext) -> int:
    hp = ctx.spec.hyperparameters
    return max(1, hp.batch_size // (ctx.d.world_size * hp.grad_accum))


def make_model(ctx: JobContext, tokenizer, *, trainable_fraction: float = 1.0, reference_copy: bool = False):
    """A fresh preset Llama or the base model, after checking that training it fits in memory."""
    spec, hp, d = ctx.spec, ctx.spec.hyperparameters, ctx.d
    if spec.model.preset:
        ids = special_ids(tokenizer)
        cfg = llama_config(get_preset(spec.model.preset), len(tokenizer), bos=ids["bos"], eos=ids["eos"],
                           pad=ids["pad"], seq_len=hp.seq_len)
    else:
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(spec.model.base)
        except OSError as exc:
            raise DataError(f"cannot load base model {spec.model.base}: {exc}") from None
    need = check_fits(cfg, d.device, processes_here=d.local_world_size, trainable_fraction=trainable_fraction,
                      micro_batch=micro_batch(ctx), seq_len=hp.seq_len, world_size=d.world_size,
                      sharded=hp.parallel == "fsdp" and d.distributed, reference_copy=reference_copy)
    ctx.sink.message(f"memory estimate {need / 2**30:.2f} GiB for training on {d.device.type}")
    if spec.model.preset:
        return build_model(cfg, hp.seed)
    model = load_model(spec.model.base)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise DataError(f"base model {spec.model.base} has fewer embeddings than its tokenizer has tokens")
    return model


def export_full(model: torch.nn.Module, state_dict: dict, folder: Path) -> None:
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)


def lm_setup(ctx: JobContext, kind: Kind, data_path: str | None = None, trainable_fraction: float = 1.0) -> Setup:
    """Pretraining or SFT: next-token loss on packed windows (all tokens, or assistant turns only)."""
    spec, hp = ctx.spec, ctx.spec.hyperparameters
    tokenizer = base_tokenizer(spec.model.base, kind) if spec.model.base else None
    train = prepare_data(ctx, data_path or spec.data.train, kind, "train", tokenizer)
    tokenizer = train.tokenizer
    validation = None
    if spec.data.validation:
        validation = window_batches(prepare_data(ctx, spec.data.validation, kind, "validation", tokenizer),
                                    hp.seq_len, "validation")
    return Setup(model=make_model(ctx, tokenizer, trainable_fraction=trainable_fraction), tokenizer=tokenizer,
                 train=window_batches(train, hp.seq_len, "training"), validation=validation, objective=lm_loss,
                 data=train.manifest, parent=spec.model.base, export=export_full)


def detect_kind(path: str, text_field: str) -> Kind:
    """Chat data if the first record has ``messages``, else text."""
    from ..data.sources import iter_records

    first = next(iter(iter_records(path, text_field)), None)
    if first is None:
        raise DataError(f"training data {path} is empty")
    return "chat" if "messages" in first else "text"
