"""``dpo``: Direct Preference Optimization of a trained model against a frozen copy of itself."""

from __future__ import annotations

from ..batches import PairBatches
from ..data.preference import PairData
from ..data.sources import DataError
from ..model import load_model
from ..objectives import DPOLoss
from .common import JobContext, Setup, base_tokenizer, export_full, make_model, prepare_data


def _pairs(ctx: JobContext, path: str, folder: str, tokenizer) -> PairBatches:
    prepared = prepare_data(ctx, path, "preference", folder, tokenizer)
    if prepared.manifest["n_pairs"] == 0:
        raise DataError(f"{path}: no preference pair fits in seq_len {ctx.spec.hyperparameters.seq_len}")
    return PairBatches(PairData(prepared.folder))


def setup(ctx: JobContext) -> Setup:
    spec = ctx.spec
    tokenizer = base_tokenizer(spec.model.base, "preference")
    train = _pairs(ctx, spec.data.train, "train", tokenizer)
    validation = _pairs(ctx, spec.data.validation, "validation", tokenizer) if spec.data.validation else None
    model = make_model(ctx, tokenizer, reference_copy=True)
    reference = load_model(spec.model.base).to(ctx.d.device)
    return Setup(model=model, tokenizer=tokenizer, train=train, validation=validation,
                 objective=DPOLoss(reference, spec.hyperparameters.dpo_beta), data=train.data.manifest,
                 parent=spec.model.base, export=export_full)
