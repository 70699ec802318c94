"""Fixtures for the precision tests: the shared public data folder (skips when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("TEXTSERVE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
"""The public data sets (../shared/data from the repo root; TEXTSERVE_SHARED_DATA overrides)."""


def shared_file(relative: str) -> Path:
    """A file of the shared data folder; skips the test with the reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (the public data sets live in ../shared/data)")
    return path


def sst2(path: Path) -> tuple[list[str], list[int]]:
    """SST-2 `<0|1> <sentence>` lines -> (sentences, labels)."""
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition(" ")
        if text.strip():
            texts.append(text.strip())
            labels.append(int(label))
    return texts, labels


def conll_sentences(path: Path) -> list[str]:
    """The sentences of a CoNLL-2003 file (tokens joined by spaces, -DOCSTART- skipped)."""
    sentences: list[str] = []
    tokens: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts:
            if tokens:
                sentences.append(" ".join(tokens))
            tokens = []
        elif parts[0] != "-DOCSTART-":
            tokens.append(parts[0])
    if tokens:
        sentences.append(" ".join(tokens))
    return sentences
