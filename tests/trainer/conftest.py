"""Fixtures for the training-job tests; the helpers they use live in jobutil.py."""

from jobutil import chat_jsonl, text_corpus  # noqa: F401  (fixtures)
