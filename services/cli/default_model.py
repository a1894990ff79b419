"""The small default model ``llmsvc up`` serves when no ``--model`` is given.

It is a randomly initialised tiny Llama (about 3.5M parameters) with a byte-level
BPE tokenizer trained here by ``tokenizers`` on a corpus generated from
templates, so every machine can make it offline in seconds. It is written in
Hugging Face format, which vLLM serves unchanged. The trainer's ``tiny-chat``
recipe produces a trained replacement in the same layout.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

from trainer.data.tokenizer import chat_template

CHAT_TEMPLATE = chat_template(bos=False)
"""The same ChatML-with-tools template as trained models, without the BOS token (this model never saw one)."""
SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
PAD, BOS, EOS, IM_START, IM_END = SPECIAL_TOKENS

_WORDS = (
    "the a model token serve request user system assistant answer question number list sort reverse count copy "
    "add sum table row column value name city river mountain red green blue one two three four five six seven "
    "eight nine ten hello world data train eval cluster worker router gateway key limit stream chat complete"
).split()


def _corpus(n_lines: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.4:
            yield " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16)))
        elif kind < 0.7:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            yield f"What is {a} + {b}? {a + b}."
        else:
            yield "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ,.!?") for _ in range(rng.randint(8, 40)))


def train_tokenizer(vocab_size: int = 2048, seed: int = 0):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(20_000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=[IM_START, IM_END]
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Shapes of the random Llamas: "tiny" is what ``llmsvc up`` and the tests serve (3.5M parameters);
# "small" (10M) is for benchmarks where prefill must cost enough for prefix caching to show.
SIZES = {
    "tiny": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "small": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6,
              "num_key_value_heads": 2},
}


def build_default_model(out_dir: Path, seed: int = 0, progress=None, size: str = "tiny") -> Path:
    """Write the random Llama of ``size`` (see :data:`SIZES`) and its tokenizer to ``out_dir`` atomically.

    ``progress`` is an optional callable ``(step, total, label)`` for a progress bar.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    steps = 3
    report = progress or (lambda *_: None)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    report(0, steps, "training tokenizer")
    tokenizer = train_tokenizer(seed=seed)
    tokenizer.save_pretrained(tmp)

    report(1, steps, "initialising model")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **SIZES[size],  # head_dim 64 in every size: one vLLM's CPU attention supports
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=[tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)

    report(2, steps, "writing safetensors")
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(tmp)
    (tmp / "llmsvc.json").write_text(json.dumps({"name": f"{size}-random", "recipe": "random-init", "seed": seed,
                                                        "tool_parser": "hermes"}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    report(3, steps, "done")
    return out_dir


def cached(cache_root: Path, size: str = "tiny") -> Path:
    """The random model of ``size`` built once under ``cache_root``, in a folder named after what shapes it
    (its chat template and tool parser), so a cache built by older code is never served. The model's own
    folder is ``{size}-random``: its served name."""
    import hashlib

    tag = hashlib.sha256(f"{CHAT_TEMPLATE}|tool_parser=hermes".encode()).hexdigest()[:8]
    path = Path(cache_root) / f"random-{tag}" / f"{size}-random"
    if not (path / "config.json").exists():
        build_default_model(path, size=size)
    return path
