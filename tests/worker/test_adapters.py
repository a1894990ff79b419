"""The checks a worker runs on an adapter folder before vLLM sees it (services/worker/adapters.py)."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from services.worker.adapters import AdapterError, BaseShapes, check_adapter

from .lora import make_adapter


@pytest.fixture(scope="module")
def shapes(default_model):
    return BaseShapes.from_config(AutoConfig.from_pretrained(default_model))


def test_a_peft_adapter_of_the_base_passes_and_reports_its_rank(tmp_path, default_model, shapes):
    adapter = make_adapter(default_model, tmp_path / "a", r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"))
    assert check_adapter(adapter, shapes, max_rank=16) == 8


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_missing_file_is_named(tmp_path, default_model, shapes, missing):
    adapter = make_adapter(default_model, tmp_path / "a")
    (adapter / missing).unlink()
    with pytest.raises(AdapterError, match=f"{missing} is missing"):
        check_adapter(adapter, shapes, max_rank=16)


def test_a_missing_folder_is_named(tmp_path, shapes):
    with pytest.raises(AdapterError, match="folder .* is missing"):
        check_adapter(tmp_path / "gone", shapes, max_rank=16)


def test_an_adapter_of_another_base_is_refused_with_the_shapes(tmp_path, default_model, shapes):
    adapter = make_adapter(default_model, tmp_path / "other", hidden_size=128)
    with pytest.raises(AdapterError, match=r"another base model: .*q_proj.* has shape \[8, 128\], this base needs "
                                           r"\[8, 256\]"):
        check_adapter(adapter, shapes, max_rank=16)


def test_a_rank_above_the_limit_is_refused_naming_the_setting(tmp_path, default_model, shapes):
    adapter = make_adapter(default_model, tmp_path / "a", r=32)
    with pytest.raises(AdapterError, match="rank 32 is above this worker's limit of 16 .*MAX_LORA_RANK"):
        check_adapter(adapter, shapes, max_rank=16)


def test_a_truncated_weights_file_is_refused(tmp_path, default_model, shapes):
    adapter = make_adapter(default_model, tmp_path / "a")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(AdapterError, match="not a readable PEFT adapter"):
        check_adapter(adapter, shapes, max_rank=16)
