"""Sources: stream records from text files, folders, JSONL, or Hugging Face datasets saved on disk.

Everything is a generator, so memory stays flat however large the corpus is.
Text files are split into documents at blank lines; JSONL files and datasets
give one record (a dict) per line or row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


class DataError(ValueError):
    """The training data is missing, unreadable or unusable; the message names the file (and line)."""


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "state.json",
                                                                       "dataset_dict.json"))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no .txt/.md/.jsonl files")
    return files


def _text_documents(path: Path) -> Iterator[dict]:
    """One document per blank-line-separated block, read line by line."""
    block: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    yield {"text": "".join(block).rstrip("\n")}
                    block = []
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    if block:
        yield {"text": "".join(block).rstrip("\n")}


def _jsonl_records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield record


def _hf_records(path: Path) -> Iterator[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - declared in pyproject
        raise DataError(f"{path} is a Hugging Face dataset but the 'datasets' package is not installed") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot load the Hugging Face dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: dataset has splits {list(ds)} but no 'train'")
        ds = ds["train"]
    yield from ds  # Arrow-backed and memory-mapped: rows are read lazily


def iter_records(path: str | Path, text_field: str = "text") -> Iterator[dict]:
    """Yield records (dicts) from ``path``; plain text becomes ``{text_field: document}``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"training data {path} does not exist")
    if is_hf_dataset(path):
        yield from _hf_records(path)
        return
    for file in _files(path):
        if file.suffix.lower() in JSONL_SUFFIXES:
            yield from _jsonl_records(file)
        else:
            for doc in _text_documents(file):
                yield {text_field: doc["text"]}


def source_fingerprint(path: str | Path) -> list[tuple[str, int, int]]:
    """(file, size, mtime_ns) of every input file: decides whether prepared data can be reused."""
    path = Path(path)
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
