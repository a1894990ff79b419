"""The data pipeline: read → clean (filter, PII scrub, dedup) → train a tokenizer if needed → pack.

Each stage streams through files on disk (``clean.jsonl``, then the shards),
so memory stays flat as the corpus grows; each shows a progress bar on stderr.
The prepared folder is built beside its final place and renamed into it, and
reused when the same data and settings come again (a resumed job).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from ..spec import DataSpec
from .chat import encode_chat, encode_preference, parse_preference, validate_record
from .dedup import ExactDedup, NearDedup
from .filters import QualityFilter
from .pack import PACKING, ShardWriter
from .pii import PIIScrubber
from .preference import PairWriter
from .sources import DataError, iter_records, source_fingerprint
from .tokenizer import byte_tokenizer, special_ids, train_bpe

Kind = Literal["text", "chat", "preference"]


@dataclass(slots=True)
class Prepared:
    folder: Path
    """Shards and ``manifest.json`` (or ``pairs.*`` for preference data)."""
    manifest: dict
    tokenizer: object
    """The transformers tokenizer the data was encoded with."""

    @property
    def data_hash(self) -> str:
        return self.manifest["data_hash"]


def _bar(it, desc: str, show: bool, **kw):
    return tqdm(it, desc=desc, unit="doc", file=sys.stderr, disable=not show, mininterval=1.0, **kw)


def _normalise(record: dict, kind: Kind, data: DataSpec, where: str) -> dict:
    if kind == "text":
        text = record.get(data.text_field)
        if not isinstance(text, str):
            raise DataError(f"{where}: no string field {data.text_field!r} (fields: {sorted(record)})")
        return {"text": text}
    if kind == "chat":
        return validate_record(record, where)
    p = parse_preference(record, where)
    return {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}


def _texts(rec: dict) -> Iterator[str]:
    if "text" in rec:
        yield rec["text"]
    for m in rec.get("messages", ()) or rec.get("prompt", ()):
        if isinstance(m.get("content"), str):
            yield m["content"]
        for c in m.get("tool_calls", ()):
            yield json.dumps(c["function"], sort_keys=True)
    if "tools" in rec:
        yield json.dumps(rec["tools"], sort_keys=True)
    for key in ("chosen", "rejected"):
        if key in rec:
            yield rec[key]


class Cleaner:
    """Filters, scrubs and deduplicates records one at a time, counting everything it changes."""

    def __init__(self, data: DataSpec, kind: Kind) -> None:
        self.kind = kind
        self.quality = QualityFilter(data.min_chars, data.max_chars, data.max_repetition, data.max_symbol_ratio) \
            if data.filters and kind == "text" else None
        self.pii = PIIScrubber() if data.scrub_pii else None
        self.exact = ExactDedup() if data.dedup else None
        self.near = NearDedup(data.near_dup_threshold) if data.near_dedup and kind == "text" else None

    def __call__(self, rec: dict) -> dict | None:
        if self.quality and not self.quality.keep(rec["text"]):
            return None
        if self.pii:
            rec = _map_texts(rec, self.pii.scrub)
        key = "\n".join(_texts(rec))
        if self.exact and not self.exact.keep(key):
            return None
        if self.near and not self.near.keep(key):
            return None
        return rec

    def stats(self) -> dict:
        return {"filtered": dict(self.quality.dropped) if self.quality else {},
                "exact_duplicates": self.exact.dropped if self.exact else 0,
                "near_duplicates": self.near.dropped if self.near else 0,
                "pii_replaced": dict(self.pii.counts) if self.pii else {}}


def _map_texts(rec: dict, fn) -> dict:
    out = dict(rec)
    if "text" in out:
        out["text"] = fn(out["text"])
    for key in ("messages", "prompt"):
        if key in out:
            out[key] = [{**m, "content": fn(m["content"])} if isinstance(m.get("content"), str) else m
                        for m in out[key]]
    for key in ("chosen", "rejected"):
        if key in out:
            out[key] = fn(out[key])
    return out


def clean(path: str, data: DataSpec, kind: Kind, out: Path, show: bool = True) -> dict:
    """Stream ``path`` into ``out`` (clean JSONL); return counts and the sha256 of what was kept."""
    cleaner = Cleaner(data, kind)
    digest = hashlib.sha256()
    read = kept = 0
    with open(out, "w") as f:
        for i, record in enumerate(_bar(iter_records(path, data.text_field), "clean", show), 1):
            read += 1
            rec = cleaner(_normalise(record, kind, data, f"{path} record {i}"))
            if rec is None:
                continue
            # Sorted keys make the hash canonical; not with tools, whose parameters' order is their signature.
            line = json.dumps(rec, ensure_ascii=False, sort_keys="tools" not in rec)
            digest.update(line.encode() + b"\n")
            f.write(line + "\n")
            kept += 1
    stats = {"read": read, "kept": kept, **cleaner.stats()}
    if kept == 0:
        raise DataError(f"no usable {kind} records in {path} (read {read}; dropped: "
                        f"{json.dumps({k: v for k, v in stats.items() if k not in ('read', 'kept')})})")
    return {"data_hash": digest.hexdigest(), "cleaning": stats}


def _read_clean(path: Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)


def pack(clean_path: Path, kind: Kind, tokenizer, out: Path, seq_len: int, extra: dict, show: bool = True) -> dict:
    ids_of = special_ids(tokenizer)
    bos, eos = ids_of["bos"], ids_of["eos"][0]
    vocab = len(tokenizer)
    backend = tokenizer.backend_tokenizer
    if kind == "preference":
        writer = PairWriter(out, seq_len=seq_len, pad_id=ids_of["pad"])
        for rec in _bar(_read_clean(clean_path), "tokenize", show, total=extra["cleaning"]["kept"]):
            pref = parse_preference(rec, str(clean_path))
            writer.add(*encode_preference(tokenizer, pref))
        return writer.finish(vocab_size=vocab, **extra)
    writer = ShardWriter(out, vocab_size=vocab, with_mask=kind == "chat",
                         window=seq_len + 1 if kind == "chat" else None, pad_id=ids_of["pad"])
    for rec in _bar(_read_clean(clean_path), "tokenize", show, total=extra["cleaning"]["kept"]):
        if kind == "text":
            writer.add([bos] + backend.encode(rec["text"], add_special_tokens=False).ids + [eos])
        else:
            ids, mask = encode_chat(tokenizer, rec["messages"], rec.get("tools"))
            writer.add(ids + [eos], mask + [0])
    return writer.finish(vocab_size=vocab, bos=bos, eos=eos, pad=ids_of["pad"], **extra)


def prepare(path: str, data: DataSpec, kind: Kind, work_dir: Path, *, seq_len: int, tokenizer=None,
            show: bool = True, wait: bool = False) -> Prepared:
    """Prepare ``path`` in ``work_dir`` (reusing an identical earlier preparation).

    ``tokenizer`` None trains one on the cleaned data (``data.tokenizer``: BPE or bytes) and saves it
    in ``work_dir/tokenizer``. ``wait`` (the other ranks of a torchrun job) polls until another
    process has prepared it: a file poll, not a collective, so a long preparation hits no timeout.
    """
    from transformers import AutoTokenizer

    if not Path(path).exists():
        raise DataError(f"training data {path} does not exist")
    key = hashlib.sha256(json.dumps({
        "data": data.model_dump(), "kind": kind, "seq_len": seq_len, "source": source_fingerprint(path),
        "packing": PACKING,
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else "train",
    }, sort_keys=True, default=str).encode()).hexdigest()
    work_dir = Path(work_dir)
    done = work_dir / "manifest.json"
    while True:
        try:
            manifest = json.loads(done.read_text())
            if manifest.get("key") == key:
                return Prepared(work_dir, manifest, tokenizer or AutoTokenizer.from_pretrained(work_dir / "tokenizer"))
        except (OSError, ValueError):  # absent, or being replaced by the process that prepares it
            pass
        if not wait:
            break
        time.sleep(1.0)

    tmp = work_dir.with_name(work_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extra = clean(path, data, kind, tmp / "clean.jsonl", show)
    if tokenizer is None:
        if data.tokenizer == "bytes":
            tokenizer = byte_tokenizer(data.extra_tokens)
        else:
            texts = (t for rec in _read_clean(tmp / "clean.jsonl") for t in _texts(rec))
            tokenizer = train_bpe(texts, data.vocab_size, show_progress=show)
        tokenizer.save_pretrained(tmp / "tokenizer")
    manifest = pack(tmp / "clean.jsonl", kind, tokenizer, tmp, seq_len, {**extra, "key": key, "kind": kind}, show)
    (tmp / "clean.jsonl").unlink()  # the shards hold everything training needs
    shutil.rmtree(work_dir, ignore_errors=True)
    tmp.rename(work_dir)
    return Prepared(work_dir, manifest, tokenizer)


def stage_counts(manifest: dict) -> Counter:
    """Flat counters for a job message: what each stage kept, dropped or replaced."""
    c = manifest["cleaning"]
    flat = Counter({"read": c["read"], "kept": c["kept"], "exact_duplicates": c["exact_duplicates"],
                    "near_duplicates": c["near_duplicates"]})
    flat.update({f"filtered_{k}": v for k, v in c["filtered"].items()})
    flat.update({f"pii_{k}": v for k, v in c["pii_replaced"].items()})
    return flat
