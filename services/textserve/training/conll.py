"""Tagged sentences for token classification: CoNLL files and JSONL with character spans.

CoNLL: one token per line, the tag in the last column (4 columns `token POS chunk NER` as
in CoNLL-2003, or 2 columns `token NER`; every line of a file has the same count), blank
lines between sentences, `-DOCSTART-` lines between documents. Tags are IOB1 or IOB2 and
always come out IOB2 (iob1_to_iob2 is a no-op on IOB2 input).

JSONL: one object per line, `{"text": "...", "entities": [{"start": 0, "end": 5, "label":
"PER"}, ...]}` with code-point offsets (end exclusive). The text is split into words
(runs of word characters, or single other non-space characters); each entity must start
and end on word boundaries and not overlap another, and becomes B-/I- tags on its words.

A malformed line raises DataError naming the file and line number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textserve.training.data import DataError

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class TaggedSentence:
    """Words and their IOB2 tags (same length)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]


def read_tagged_sentences(path: Path) -> list[TaggedSentence]:
    """The sentences of a CoNLL file (any suffix but .jsonl/.ndjson) or a JSONL span file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            sentences = _read_span_jsonl(path)
        else:
            sentences = _read_conll(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def _check_tag(tag: str, where: str) -> None:
    if tag == "O":
        return
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I") or not kind:
        raise DataError(f"{where}: tag {tag!r} is neither 'O' nor 'B-TYPE' / 'I-TYPE' (IOB1 or IOB2)")


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB2 tags of an IOB1 (or IOB2) sequence: an I-X that does not continue an X entity
    begins one (B-X); everything else is kept."""
    converted: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            converted.append("B-" + tag[2:])
        else:
            converted.append(tag)
        previous = tag
    return converted


def _read_conll(path: Path) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    columns = 0

    def close() -> None:
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(iob1_to_iob2(tags))))
            words.clear()
            tags.clear()

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                close()
                continue
            if fields[0] == "-DOCSTART-":
                close()
                continue
            where = f"{path}:{number}"
            if len(fields) < 2:
                raise DataError(f"{where}: expected 'token ... tag' columns, got {line.strip()[:60]!r}")
            if columns == 0:
                columns = len(fields)
            elif len(fields) != columns:
                raise DataError(f"{where}: {len(fields)} columns where earlier lines have {columns}")
            _check_tag(fields[-1], where)
            words.append(fields[0])
            tags.append(fields[-1])
    close()
    return sentences


def _read_span_jsonl(path: Path) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise DataError(f"{where}: expected an object with a non-empty 'text' and 'entities'")
            entities = row.get("entities", [])
            if not isinstance(entities, list):
                raise DataError(f"{where}: 'entities' must be a list")
            sentences.append(spans_to_sentence(row["text"], entities, where))
    return sentences


def spans_to_sentence(text: str, entities: Sequence[object], where: str) -> TaggedSentence:
    """Words of text with IOB2 tags from character-span entities (code points, end exclusive)."""
    matches = list(_WORD.finditer(text))
    starts = {m.start(): i for i, m in enumerate(matches)}
    ends = {m.end(): i for i, m in enumerate(matches)}
    tags = ["O"] * len(matches)
    for entity in entities:
        if not isinstance(entity, dict):
            raise DataError(f"{where}: each entity must be an object with start, end and label")
        start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
        if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= len(text):
            raise DataError(f"{where}: entity offsets {start}..{end} are not within the text")
        if not isinstance(label, str) or not label.strip() or label.startswith(("B-", "I-")) or label == "O":
            raise DataError(f"{where}: entity label {label!r} must be a type name such as 'PER'")
        if start not in starts or end not in ends:
            raise DataError(
                f"{where}: entity {start}..{end} {text[start:end]!r} does not start and end "
                "on word boundaries"
            )
        first, last = starts[start], ends[end]
        if any(tag != "O" for tag in tags[first : last + 1]):
            raise DataError(f"{where}: entity {start}..{end} {text[start:end]!r} overlaps another entity")
        tags[first] = "B-" + label
        for i in range(first + 1, last + 1):
            tags[i] = "I-" + label
    return TaggedSentence(tuple(m.group() for m in matches), tuple(tags))
