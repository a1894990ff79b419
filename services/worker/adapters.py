"""LoRA adapters on one engine: checked before vLLM sees them, loaded on first use, evicted least recently used.

vLLM keeps up to ``max_cpu_loras`` adapters in memory and ``max_loras`` of them in
one batch. We keep the same bound ourselves and remove the least recently used
idle adapter before a new one is added, so vLLM never evicts on its own and the
load/eviction counts are exact rather than inferred. An adapter in use by a
running request is never removed: the cache may then run over its bound until
that request ends.

An adapter is checked against the base model's shapes first (reading only the
safetensors header), so a folder with a missing file, another base's weights or
a rank above the limit fails its own request with a clear message and never
reaches the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

ADAPTER_EVENTS = Counter("llmsvc_worker_adapter_events_total",
                         "LoRA adapter cache events: hit (already loaded), load (cold), evict, error.",
                         ["model", "event"])
ADAPTERS_LOADED = Gauge("llmsvc_worker_adapters_loaded", "LoRA adapters held by the engine.", ["model"])
ADAPTER_LOAD_SECONDS = Gauge("llmsvc_worker_adapter_last_load_seconds", "Duration of the last cold adapter load.",
                             ["model"])

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


class AdapterError(ValueError):
    """The adapter cannot be served on this base (the request is refused; nothing else is affected)."""


@dataclass(frozen=True, slots=True)
class BaseShapes:
    """(in_features, out_features) of each linear layer an adapter may target, from the base's config."""

    linears: dict[str, tuple[int, int]]

    @classmethod
    def from_config(cls, cfg) -> BaseShapes:
        hidden, inter = cfg.hidden_size, cfg.intermediate_size
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        return cls({"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim),
                    "v_proj": (hidden, kv * head_dim), "o_proj": (heads * head_dim, hidden),
                    "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)})


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def check_adapter(path: Path, base: BaseShapes, max_rank: int) -> int:
    """The adapter's rank if ``path`` is a PEFT LoRA adapter that fits ``base`` within ``max_rank``;
    else AdapterError saying what is wrong."""
    if not path.is_dir():
        raise AdapterError(f"its folder {path} is missing from the model store")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise AdapterError(f"{name} is missing from {path}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        shapes = _safetensors_shapes(path / WEIGHTS_FILE)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise AdapterError(f"{path} is not a readable PEFT adapter ({exc})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"it is a {config.get('peft_type')} adapter; only LoRA adapters are served")
    rank = int(config.get("r") or 0)
    if rank > max_rank:
        raise AdapterError(f"its rank {rank} is above this worker's limit of {max_rank} (LLMSVC_WORKER_MAX_LORA_RANK)")
    for key, shape in shapes.items():
        module = next((m for m in base.linears if f".{m}." in key), None)
        if module is None:
            raise AdapterError(f"it adapts {key.split('.lora_')[0]}, which LoRA cannot target on this base")
        fan_in, fan_out = base.linears[module]
        want = [rank, fan_in] if ".lora_A." in key else [fan_out, rank]
        if list(shape) != want:
            raise AdapterError(f"it was trained for another base model: {key} has shape {shape}, "
                               f"this base needs {want}")
    return rank


class AdapterCache:
    """Adapter name → vLLM ``LoRARequest``, loading into ``engine`` on first use and evicting by LRU."""

    def __init__(self, engine, base: BaseShapes, *, capacity: int, max_rank: int, model: str) -> None:
        self.engine, self.base, self.capacity, self.max_rank, self.model = engine, base, capacity, max_rank, model
        self._loaded: OrderedDict[str, object] = OrderedDict()  # name -> LoRARequest, least recent first
        self._users: dict[str, int] = {}
        self._ids: dict[str, int] = {}
        self._lock = asyncio.Lock()  # one load or eviction at a time; hits do not wait for it
        for event in ("hit", "load", "evict", "error"):  # series exist at 0 before the first adapter request
            ADAPTER_EVENTS.labels(model, event)
        ADAPTERS_LOADED.labels(model).set(0)
        ADAPTER_LOAD_SECONDS.labels(model).set(0)

    @property
    def names(self) -> list[str]:
        return list(self._loaded)

    async def acquire(self, name: str, path: str):
        """The adapter's ``LoRARequest``, loaded if need be and held (never evicted) until :meth:`release`."""
        req = self._loaded.get(name)
        if req is None or req.lora_path != path:
            req = await self._load(name, path)
        else:
            self._loaded.move_to_end(name)
            ADAPTER_EVENTS.labels(self.model, "hit").inc()
        self._users[name] = self._users.get(name, 0) + 1
        return req

    def release(self, name: str) -> None:
        self._users[name] -= 1

    async def _load(self, name: str, path: str):
        from vllm.lora.request import LoRARequest

        async with self._lock:
            if (req := self._loaded.get(name)) is not None and req.lora_path == path:  # loaded while we waited
                self._loaded.move_to_end(name)
                ADAPTER_EVENTS.labels(self.model, "hit").inc()
                return req
            try:
                await asyncio.to_thread(check_adapter, Path(path), self.base, self.max_rank)
            except AdapterError:
                ADAPTER_EVENTS.labels(self.model, "error").inc()
                raise
            if (stale := self._loaded.pop(name, None)) is not None:  # same name, other folder: replace it
                await self.engine.remove_lora(stale.lora_int_id)
            await self._make_room()
            lora_id = self._ids.setdefault(name, len(self._ids) + 1)
            req = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=path)
            started = asyncio.get_running_loop().time()
            try:
                await self.engine.add_lora(req)
            except Exception as exc:  # vLLM refused it (engine-side check): this request only
                ADAPTER_EVENTS.labels(self.model, "error").inc()
                raise AdapterError(f"the engine could not load it: {exc}") from exc
            self._loaded[name] = req
            ADAPTER_LOAD_SECONDS.labels(self.model).set(asyncio.get_running_loop().time() - started)
            ADAPTER_EVENTS.labels(self.model, "load").inc()
            ADAPTERS_LOADED.labels(self.model).set(len(self._loaded))
            log.info("loaded adapter %s from %s (%d held)", name, path, len(self._loaded))
            return req

    async def _make_room(self) -> None:
        idle = [n for n in self._loaded if not self._users.get(n)]
        while len(self._loaded) >= self.capacity and idle:
            name = idle.pop(0)
            req = self._loaded.pop(name)
            await self.engine.remove_lora(req.lora_int_id)
            ADAPTER_EVENTS.labels(self.model, "evict").inc()
            log.info("evicted adapter %s", name)
        ADAPTERS_LOADED.labels(self.model).set(len(self._loaded))
