"""Conversations to token ids with an assistant-only loss mask, through the tokenizer's own chat template.

Works for any template that renders a conversation's prefix as a prefix of
the whole (ChatML, Llama 3, ...): the text added by each assistant turn is
what the model learns to produce, everything else is context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .sources import DataError
from .tokenizer import CHAT_TEMPLATE, IM_END, IM_START, TOOL_CALL_END, TOOL_CALL_START

ROLES = {"system", "user", "assistant"}
CHAT_ROLES = ROLES | {"tool"}


def _arguments(args, where: str):
    """A call's arguments: a JSON object, given as a mapping or as its JSON text (OpenAI's way)."""
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            raise DataError(f"{where}: 'arguments' is not valid JSON: {args[:80]!r}") from None
    else:
        parsed = args
    if not isinstance(parsed, dict):
        raise DataError(f"{where}: 'arguments' must be a JSON object")
    # Kept as JSON text, as the template writes it (tojson): the cleaned file's sorted keys cannot reorder it.
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def validate_tools(tools, where: str) -> list[dict]:
    """OpenAI's ``tools`` list: ``{"type": "function", "function": {"name", "description"?, "parameters"?}}``."""
    if not isinstance(tools, list) or not tools:
        raise DataError(f"{where}: 'tools' must be a non-empty list of functions")
    clean = []
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise DataError(f"{where}: tool {i} must be {{'type': 'function', 'function': {{'name': ...}}}}")
        params = f.get("parameters")
        if params is not None and not (isinstance(params, dict) and isinstance(params.get("properties", {}), dict)):
            raise DataError(f"{where}: tool {i} ({f['name']}): 'parameters' must be a JSON Schema object")
        fn = {"name": f["name"]}
        if isinstance(f.get("description"), str):
            fn["description"] = f["description"]
        if params is not None:
            fn["parameters"] = params
        clean.append({"type": "function", "function": fn})
    return clean


def _tool_calls(calls, where: str, offered: set[str] | None) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise DataError(f"{where}: 'tool_calls' must be a non-empty list")
    clean = []
    for j, c in enumerate(calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or "arguments" not in f:
            raise DataError(f"{where}: tool call {j} needs 'function' with a 'name' and 'arguments'")
        if offered is not None and f["name"] not in offered:
            raise DataError(f"{where}: tool call {j} calls {f['name']!r}, which the record's 'tools' do not offer")
        call = {"type": "function", "function": {"name": f["name"],
                                                 "arguments": _arguments(f["arguments"], f"{where} tool call {j}")}}
        if "id" in c:
            if not isinstance(c["id"], str):
                raise DataError(f"{where}: tool call {j}: 'id' must be a string")
            call["id"] = c["id"]
        clean.append(call)
    return clean


def validate_messages(messages, where: str, tools: list[dict] | None = None) -> list[dict]:
    """OpenAI's chat fine-tuning format: system/user/assistant/tool messages; an assistant message may
    make ``tool_calls`` (its content then null or absent), a ``tool`` message answers them."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    offered = {t["function"]["name"] for t in tools} if tools else None
    clean = []
    pending: set[str | None] = set()  # ids of calls no tool message has answered yet
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in CHAT_ROLES:
            raise DataError(f"{where}: message {i} needs a role in {sorted(CHAT_ROLES)}")
        content = m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            if content is not None and not isinstance(content, str):
                raise DataError(f"{where}: message {i}: an assistant message with tool_calls has a string or "
                                "null content")
            calls = _tool_calls(m["tool_calls"], f"{where}: message {i}", offered)
            out = {"role": role, "tool_calls": calls}
            if content:
                out["content"] = content
            pending = {c.get("id") for c in calls}
            clean.append(out)
            continue
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} ({role}) needs a string content")
        out = {"role": role, "content": content}
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise DataError(f"{where}: message {i} (tool): 'tool_call_id' must be a string")
            if not pending or (call_id is not None and None not in pending and call_id not in pending):
                raise DataError(f"{where}: message {i} (tool) answers no tool call of the assistant message "
                                "before it")
            if call_id is not None:
                out["tool_call_id"] = call_id
        else:
            pending = set()
        clean.append(out)
    if not any(m["role"] == "assistant" for m in clean):
        raise DataError(f"{where}: a conversation needs at least one assistant message to learn from")
    return clean


def validate_record(record: dict, where: str) -> dict:
    """A chat record: ``messages``, and ``tools`` when functions are offered."""
    if "messages" not in record:
        raise DataError(f"{where}: chat data needs a 'messages' field (fields: {sorted(record)})")
    tools = validate_tools(record["tools"], where) if record.get("tools") is not None else None
    out = {"messages": validate_messages(record["messages"], where, tools)}
    if tools:
        out["tools"] = tools
    return out


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: no Python-side overhead
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer.encode(text, add_special_tokens=False)


def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask): mask is 1 on tokens produced by assistant turns (their content, tool calls and
    end-of-turn marker). ``tools`` (OpenAI's list) go to the template, which shows them to the model."""
    if getattr(tokenizer, "chat_template", None) == CHAT_TEMPLATE:
        return _encode_chatml(tokenizer, messages, tools)
    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:k], add_generation_prompt=True, tools=tools)
        full = _render(tokenizer, messages[:k + 1], add_generation_prompt=False, tools=tools)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError("the chat template does not render conversations prefix by prefix; cannot mask turns")
        context = _ids(tokenizer, prompt[len(done):])
        answer = _ids(tokenizer, full[len(prompt):])
        ids += context + answer
        mask += [0] * len(context) + [1] * len(answer)
        done = full
    rest = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)[len(done):]
    tail = _ids(tokenizer, rest)
    return ids + tail, mask + [0] * len(tail)


def _tools_turn(tools: list[dict]) -> str:
    lines = []
    for t in tools:
        f = t.get("function", t)
        props = (f.get("parameters") or {}).get("properties") or {}
        lines.append(f"{f['name']}({', '.join(props)})\n")
    return f"{IM_START}system\n<tools>\n{''.join(lines)}</tools>{IM_END}\n"


def _calls_text(calls: list[dict]) -> str:
    out = ""
    for c in calls:
        f = c.get("function", c)
        args = f["arguments"] if isinstance(f["arguments"], str) else json.dumps(f["arguments"], ensure_ascii=False)
        name = json.dumps(f["name"], ensure_ascii=False)
        out += f"{TOOL_CALL_START}{{\"name\": {name}, \"arguments\": {args}}}{TOOL_CALL_END}"
    return out


def _encode_chatml(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """Our own template rendered in Python: the same ids as the generic path (a test checks), ~50x faster."""
    ids, mask = [], []
    context = tokenizer.bos_token + (_tools_turn(tools) if tools else "")
    for m in messages:
        header = f"{IM_START}{m['role']}\n"
        content = m.get("content")
        body = (content if isinstance(content, str) else "") + _calls_text(m.get("tool_calls") or [])
        if m["role"] != "assistant":
            context += header + body + f"{IM_END}\n"
            continue
        c = _ids(tokenizer, context + header)
        a = _ids(tokenizer, body + f"{IM_END}\n")
        ids += c + a
        mask += [0] * len(c) + [1] * len(a)
        context = ""
    if context:
        tail = _ids(tokenizer, context)
        ids += tail
        mask += [0] * len(tail)
    return ids, mask


@dataclass(slots=True)
class Preference:
    prompt: list[dict]
    chosen: str
    rejected: str


def parse_preference(record: dict, where: str) -> Preference:
    """Accepts OpenAI's DPO format (``input.messages``, ``preferred_output``, ``non_preferred_output``)
    or TRL's (``prompt``, ``chosen``, ``rejected``; the prompt a string or messages)."""
    if "input" in record:
        prompt = record["input"].get("messages") if isinstance(record["input"], dict) else None
        chosen, rejected = record.get("preferred_output"), record.get("non_preferred_output")
    else:
        prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]

    def answer(x, name):
        if isinstance(x, list) and x and isinstance(x[-1], dict):
            x = x[-1].get("content")
        if not isinstance(x, str):
            raise DataError(f"{where}: '{name}' must be a string or a list ending in an assistant message")
        return x

    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: a preference record needs a prompt (string or messages)")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: prompt message {i} needs a role and a string content")
    return Preference([{"role": m["role"], "content": m["content"]} for m in prompt],
                      answer(chosen, "chosen"), answer(rejected, "rejected"))


def encode_preference(tokenizer, pref: Preference) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """((chosen ids, mask), (rejected ids, mask)), masks on the answer tokens only."""
    return (encode_chat(tokenizer, pref.prompt + [{"role": "assistant", "content": pref.chosen}]),
            encode_chat(tokenizer, pref.prompt + [{"role": "assistant", "content": pref.rejected}]))
