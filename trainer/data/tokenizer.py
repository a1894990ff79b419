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

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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
    # single_word: "ann" is one token in "ann | paris" but stays three bytes inside "bannx".
    tok.add_tokens([AddedToken(w, normalized=False, single_word=True) for w in words])
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
