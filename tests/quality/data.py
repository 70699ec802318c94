"""Loaders of the shared public data sets (SST-2, CoNLL-2003) for the quality tests.

The data lives beside the repository in `../shared/data`; from a worktree nested one level
deeper it is found by walking up. Tests skip with a reason when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path | None:
    """The first `shared/data` beside the repository or one of its parents."""
    for parent in _REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def require_data() -> Path:
    """The data folder, or skip the test."""
    found = data_dir()
    if found is None:
        pytest.skip("../shared/data (SST-2, CoNLL-2003) is not present")
    return found


def sst2(split: str) -> list[tuple[int, str]]:
    """SST-2 sentences of `train` or `dev` as (label, text); label 1 is positive."""
    path = require_data() / "sentiment" / f"stsa.binary.{split}"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, text = line.split(" ", 1)
        rows.append((int(label), text))
    return rows


def conll_sentences(file: str = "eng.testa") -> list[str]:
    """CoNLL-2003 sentences (tokens joined by spaces), -DOCSTART- lines dropped; testa is dev."""
    path = require_data() / "ner" / file
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
