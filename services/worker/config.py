"""Worker configuration (env prefix ``LLMSVC_WORKER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_WORKER_", extra="ignore")

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50060
    """gRPC port."""
    model: str
    """Path of a Hugging Face model directory (from the model store)."""
    served_model_name: str = ""
    """Name clients use for the model; defaults to the directory name."""
    model_aliases: list[str] = Field(default_factory=list)
    """Extra names this worker answers to (for example an alias such as ``tiny-chat``)."""
    max_model_len: int | None = None
    """Context window in tokens; None takes the model's own."""
    dtype: str = "auto"
    """Weights dtype for vLLM (``auto``, ``float32``, ``bfloat16`` …)."""
    enforce_eager: bool = True
    """Skip graph capture: start-up in seconds instead of minutes on CPU."""
    enable_prefix_caching: bool = True
    """vLLM automatic prefix caching (what the router's prefix-aware policy exploits)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory vLLM may take (ignored on CPU, which uses VLLM_CPU_KVCACHE_SPACE)."""
    tensor_parallel_size: int = 1
    """GPUs per engine."""
    max_num_seqs: int = 64
    """Upper bound of sequences scheduled together."""
    seed: int = 0
    """Engine seed; per-request seeds still apply."""
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    """vLLM's scheduler policy. ``priority`` schedules waiting requests by the priority the router passes
    (interactive 0 before batch 1: a batch's lines, a ``batch``-scoped key, ``x-priority: batch``), then by
    arrival; ``fcfs`` ignores it."""
    cpu_nice: int = Field(default=0, ge=0, le=19)
    """Nice value of the worker and its engine processes (0: unchanged). ``llmsvc up`` sets 10, so that on
    shared cores the spinning engine yields to the serving path's short wake-ups (see ``priority.py``)."""
    enable_lora: bool = True
    """Serve LoRA adapters of this base from the model store (vLLM multi-LoRA), chosen per request."""
    max_loras: int = Field(default=2, ge=1)
    """Distinct adapters in one batch (vLLM ``max_loras``); more wait for a slot."""
    max_lora_rank: int = Field(default=16, ge=1)
    """Highest adapter rank served (vLLM ``max_lora_rank``); a higher one is refused with a 400."""
    max_cpu_loras: int = Field(default=4, ge=1)
    """Adapters held in memory; past it the least recently used idle one is evicted (vLLM ``max_cpu_loras``)."""
    tool_parser: str | None = None
    """vLLM tool parser for this model (``hermes``, ``llama3_json``, ``mistral`` …; ``none`` for none). Unset:
    ``tool_parser`` in the model's ``llmsvc.json``, else none (then requests that offer tools get a 400)."""
    tool_strict_level: Literal["auto", "function", "parameter"] = "parameter"
    """vLLM's ``--tool-strict-level``: ``parameter`` decodes every tool call under its function's parameters
    schema (arguments always validate); ``auto`` only for tools marked ``strict`` (OpenAI's rule), with the
    call envelope still enforced for ``required`` and a named ``tool_choice``."""
    compact_json: bool = True
    """JSON under ``response_format`` and JSON structured outputs is written without free whitespace (vLLM's
    ``structured_outputs_config.disable_any_whitespace``). With whitespace free, a small model can spend its
    whole budget on newlines inside an open object, as the built-in model did at temperature 0. It pins vLLM's
    xgrammar backend (the only one with the option besides guidance), so a schema xgrammar cannot compile is a
    400 rather than a fallback to another backend; ``false`` gives vLLM's defaults. ``structured_outputs_config``
    in ``engine_args`` overrides it."""
    runner: Literal["generate", "pooling"] = "generate"
    """``pooling``: an embedding worker (vLLM's pooling runner). It serves ``Embed`` only; a generative model's
    folder is converted on load (``convert``), as ``vllm serve --runner pooling --convert embed`` does."""
    convert: Literal["auto", "embed", "none"] = "embed"
    """vLLM's ``--convert`` for a pooling worker: ``embed`` adds an embedding pooler (last token, normalized) to
    a generative model; ``auto`` lets vLLM decide from the model's architecture (a native embedding model)."""
    engine_args: dict = Field(default_factory=dict)
    """Extra ``AsyncEngineArgs`` fields as JSON, passed through unchanged."""

    @model_validator(mode="after")
    def _lora_bounds(self):
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        return self

    @property
    def model_name(self) -> str:
        from pathlib import Path

        return self.served_model_name or Path(self.model).name
