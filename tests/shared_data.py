"""The shared public data sets (SST-2, SST-3, CoNLL-2003) for tests: where they are, and two
small readers the tests use to get plain sentences out of them.

The data lives beside the repository in `../shared/data` (CI lays it there); from a worktree
nested deeper it is found by walking up; `TEXTSERVE_SHARED_DATA` overrides both. A test that
needs a file skips with the reason when it is absent (under CI=true such a skip fails the run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _find() -> Path:
    configured = os.environ.get("TEXTSERVE_SHARED_DATA")
    if configured:
        return Path(configured)
    for parent in _REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return _REPO.parent / "shared" / "data"


SHARED_DATA = _find()
"""The public data sets (../shared/data from the repo root; TEXTSERVE_SHARED_DATA overrides)."""


def shared_file(relative: str) -> Path:
    """A file of the shared data folder; skips the test with the reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (the public data sets live in ../shared/data)")
    return path


def sst2(split: str) -> list[tuple[int, str]]:
    """SST-2 sentences of `train` or `dev` as (label, text); label 1 is positive."""
    path = shared_file(f"sentiment/stsa.binary.{split}")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, text = line.split(" ", 1)
        rows.append((int(label), text))
    return rows


def conll_sentences(file: str = "eng.testa") -> list[str]:
    """CoNLL-2003 sentences (tokens joined by spaces), -DOCSTART- lines dropped; testa is dev."""
    path = shared_file(f"ner/{file}")
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
