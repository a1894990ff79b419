"""Tokenizers for models trained from scratch: byte-level BPE trained with ``tokenizers``, or plain bytes.

Both carry the project's special tokens and ChatML chat template (the same
conventions as ``services/cli/default_model.py``), so vLLM and transformers
apply the same template the model was trained with. The template starts with
the BOS token, as Llama 3's does: every training conversation and every served
prompt begins with it.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
PAD, BOS, EOS, IM_START, IM_END = SPECIAL_TOKENS

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"


def chat_template(bos: bool = True) -> str:
    """ChatML with Hermes-style tool calls, the format vLLM's ``hermes`` tool parser reads.

    - ``tools`` (OpenAI's list) becomes a system turn listing each function's signature, compactly:
      ``<tools>\nadd(a, b)\nget_city(name)\n</tools>`` (names and parameter names only, so a tiny
      model's context is not spent on JSON Schema).
    - An assistant turn's ``tool_calls`` follow its text as
      ``<tool_call>{"name": "add", "arguments": {"a": 12, "b": 7}}</tool_call>``, one per call. Arguments
      given as a JSON string are written as they are; given as a mapping, with ``tojson``
      (``json.dumps``'s default separators, which is also how the model writes them).
    - A ``tool`` turn holds the tool's result as its content.
    """
    head = "{{ bos_token }}" if bos else ""
    return head + (
        "{%- if tools %}"
        "{{ '<|im_start|>system\n<tools>\n' }}"
        "{%- for t in tools %}{%- set f = t.function if t.function is defined else t %}"
        "{%- set props = f.parameters.properties if f.parameters is defined and f.parameters "
        "and f.parameters.properties is defined else {} %}"
        "{{ f.name + '(' + (props | list | join(', ')) + ')\n' }}"
        "{%- endfor %}"
        "{{ '</tools><|im_end|>\n' }}"
        "{%- endif %}"
        "{%- for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{%- if m['content'] is string %}{{ m['content'] }}{%- endif %}"
        "{%- if m['tool_calls'] is defined and m['tool_calls'] %}"
        "{%- for tc in m['tool_calls'] %}{%- set f = tc.function if tc.function is defined else tc %}"
        "{{ '<tool_call>{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' }}"
        "{%- if f.arguments is string %}{{ f.arguments }}{%- else %}{{ f.arguments | tojson }}{%- endif %}"
        "{{ '}</tool_call>' }}"
        "{%- endfor %}"
        "{%- endif %}"
        "{{ '<|im_end|>\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
    )


CHAT_TEMPLATE = chat_template()


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END], model_max_length=1 << 20,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _pre_tokenizer(split_digits: bool):
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if not split_digits:
        return byte_level
    # One token per digit: numbers then tokenize the same way wherever they appear, which arithmetic needs.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


def train_bpe(texts: Iterable[str], vocab_size: int, *, split_digits: bool = True, min_frequency: int = 2,
              show_progress: bool = True):
    """Train a byte-level BPE on ``texts`` (streamed) and return a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(split_digits)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def byte_tokenizer(words: list[str] | tuple[str, ...] = ()):
    """A tokenizer with one token per byte (no merges): every character a model must reverse, sort or
    count is its own token. 256 byte tokens plus the special tokens, plus ``words`` as whole tokens
    (e.g. the chat roles, which every example repeats: one token instead of nine for "assistant")."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens(SPECIAL_TOKENS)
    # single_word: "ann" is one token in "ann: paris" but stays three bytes inside "bannx". A word that
    # begins with punctuation (JSON such as '", "arguments": {', or a table's ": paris") is one token
    # wherever it occurs: right after a name or a number it would never count as a single word.
    tok.add_tokens([AddedToken(w, normalized=False, single_word=w[0].isalnum()) for w in words])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok)


def special_ids(tokenizer) -> dict[str, int | list[int]]:
    """bos/eos/pad ids for the model config; generation stops at EOS or at the end of a chat turn."""
    eos = [tokenizer.convert_tokens_to_ids(EOS)]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        eos.append(im_end)
    return {"bos": tokenizer.convert_tokens_to_ids(BOS), "eos": eos, "pad": tokenizer.convert_tokens_to_ids(PAD)}
