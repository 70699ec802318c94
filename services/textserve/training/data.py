"""Labelled texts for sequence classification: readers of csv, jsonl, tsv and the SST line format.

Formats, chosen by the file name:
- `.csv`: a header naming `text` and `label` columns.
- `.jsonl` / `.ndjson`: one object per line with `text` and `label`.
- `.tsv`: a tab-separated header naming `text` and `label` (SST-3 `label<TAB>text`).
- anything else: `<label> <text>` lines, the label up to the first space (SST-2 `stsa.binary.*`).
Blank lines are skipped. A malformed line raises DataError naming the file and line number.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Training or dev data is unreadable or unusable; the message names the file (and line)."""


@dataclass(frozen=True)
class TextExample:
    """One labelled text."""

    text: str
    label: str


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the data fingerprint recorded with a trained model)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text_examples(path: Path, label_map: Mapping[str, str] | None = None) -> list[TextExample]:
    """The (text, label) rows of a file; label_map renames labels as read (e.g. 0 -> negative)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            examples = _read_jsonl(path)
        elif suffix == ".csv":
            examples = _read_table(path, ",")
        elif suffix == ".tsv":
            examples = _read_table(path, "\t")
        else:
            examples = _read_label_lines(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    if not examples:
        raise DataError(f"{path}: no examples")
    if label_map:
        examples = [TextExample(e.text, label_map.get(e.label, e.label)) for e in examples]
    return examples


def _example(text: object, label: object, where: str) -> TextExample:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise DataError(f"{where}: 'label' must be a non-empty string or an integer")
    return TextExample(text.strip(), str(label).strip())


def _read_jsonl(path: Path) -> list[TextExample]:
    examples: list[TextExample] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected an object with 'text' and 'label'")
            examples.append(_example(row.get("text"), row.get("label"), f"{path}:{number}"))
    return examples


def _read_table(path: Path, delimiter: str) -> list[TextExample]:
    examples: list[TextExample] = []
    with path.open(encoding="utf-8", newline="") as handle:
        # TSV cells are taken as they are (SST texts hold bare quotes); CSV cells may be quoted.
        if delimiter == "\t":
            reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file")
        names = [name.strip() for name in header]
        if "text" not in names or "label" not in names:
            raise DataError(f"{path}:1: the header must name 'text' and 'label' columns (got {names})")
        text_at, label_at = names.index("text"), names.index("label")
        for row in reader:
            number = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise DataError(f"{path}:{number}: {len(row)} columns where the header has {len(names)}")
            examples.append(_example(row[text_at], row[label_at], f"{path}:{number}"))
    return examples


def _read_label_lines(path: Path) -> list[TextExample]:
    examples: list[TextExample] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            label, _, text = line.strip().partition(" ")
            if not text.strip():
                raise DataError(f"{path}:{number}: expected '<label> <text>', got {line.strip()[:60]!r}")
            examples.append(_example(text, label, f"{path}:{number}"))
    return examples
