"""Training-data readers: formats, IOB1 -> IOB2, malformed lines named by number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textserve.training.conll import TaggedSentence, iob1_to_iob2, read_tagged_sentences
from textserve.training.data import DataError, TextExample, file_sha256, read_text_examples

from tests.shared_data import shared_file
from tests.training.conftest import tagged_sentences, write_conll


def test_csv_jsonl_tsv_and_label_lines(tmp_path: Path) -> None:
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('label,text\npos,"good, very good"\nneg,bad\n', encoding="utf-8")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": 0}\n', encoding="utf-8")
    tsv = tmp_path / "d.tsv"
    tsv.write_text('label\ttext\npositive\t" quoted , as is\nneutral\tmeh\n', encoding="utf-8")
    lines = tmp_path / "stsa.binary.train"
    lines.write_text("1 a good film .\n\n0 a bad one\n", encoding="utf-8")

    assert read_text_examples(csv_file) == [TextExample("good, very good", "pos"), TextExample("bad", "neg")]
    assert read_text_examples(jsonl) == [TextExample("good", "pos"), TextExample("bad", "0")]
    assert read_text_examples(tsv) == [
        TextExample('" quoted , as is', "positive"),
        TextExample("meh", "neutral"),
    ]
    assert read_text_examples(lines, {"0": "negative", "1": "positive"}) == [
        TextExample("a good film .", "positive"),
        TextExample("a bad one", "negative"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("d.csv", "text,label\nfine,a\nonly-one-column\n", 3),
        ("d.csv", "text,label\nfine,a\n,b\n", 3),
        ("d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', 3),
        ("d.jsonl", '{"text": "a", "label": "x"}\n["not", "an", "object"]\n', 2),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": true}\n', 2),
        ("d.tsv", "label\ttext\nx\tfine\ny\n", 3),
        ("d.tsv", "label\ttext\nx\tfine\nx\ty\tz\n", 3),
        ("stsa.binary.dev", "1 fine\n0 also fine\n\n1\n", 4),
    ],
)
def test_malformed_line_is_named(tmp_path: Path, name: str, content: str, line: int) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path.name}:{line}:"):
        read_text_examples(path)


def test_header_and_empty_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match="must name 'text' and 'label'"):
        read_text_examples(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty file"):
        read_text_examples(path)
    with pytest.raises(DataError, match="no such file"):
        read_text_examples(tmp_path / "absent.csv")


def test_iob1_to_iob2_is_exact() -> None:
    assert iob1_to_iob2(["I-ORG", "I-ORG", "O", "I-PER", "B-PER", "I-PER", "I-LOC", "O"]) == [
        "B-ORG",
        "I-ORG",
        "O",
        "B-PER",
        "B-PER",
        "I-PER",
        "B-LOC",
        "O",
    ]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
    assert iob1_to_iob2(iob2) == iob2
    assert iob1_to_iob2(["I-MISC"]) == ["B-MISC"]
    assert iob1_to_iob2([]) == []


def test_conll_four_and_two_columns_docstart_and_blank_lines(tmp_path: Path) -> None:
    four = tmp_path / "four.conll"
    four.write_text(
        "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n\n"
        "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n-DOCSTART- -X- O O\n"
        "Ann NNP I-NP I-PER\nBob NNP I-NP B-PER\n",
        encoding="utf-8",
    )
    assert read_tagged_sentences(four) == [
        TaggedSentence(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")),
        TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
        TaggedSentence(("Ann", "Bob"), ("B-PER", "B-PER")),
    ]
    two = tmp_path / "two.txt"
    two.write_text("Paris B-LOC\nis O\n\nNew B-LOC\nYork I-LOC\n", encoding="utf-8")
    assert read_tagged_sentences(two) == [
        TaggedSentence(("Paris", "is"), ("B-LOC", "O")),
        TaggedSentence(("New", "York"), ("B-LOC", "I-LOC")),
    ]


def test_conll_round_trip_of_generated_iob1(tmp_path: Path) -> None:
    sentences = tagged_sentences(12, seed=3)
    read = read_tagged_sentences(write_conll(tmp_path / "g.conll", sentences, iob1=True))
    assert [list(zip(s.words, s.tags, strict=True)) for s in read] == sentences


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        ("a NN I-NP O\nb O\n", 2, "2 columns where earlier lines have 4"),
        ("a O\n\nb\n", 3, "expected 'token ... tag'"),
        ("a O\nb X-PER\n", 2, "neither 'O' nor"),
        ("a O\nb B-\n", 2, "neither 'O' nor"),
    ],
)
def test_conll_malformed_line_is_named(tmp_path: Path, content: str, line: int, problem: str) -> None:
    path = tmp_path / "bad.conll"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad.conll:{line}: .*{problem}"):
        read_tagged_sentences(path)


def test_jsonl_spans(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    rows = [
        {
            "text": "Zoë Müller flew to São Paulo.",
            "entities": [{"start": 0, "end": 10, "label": "PER"}, {"start": 19, "end": 28, "label": "LOC"}],
        },
        {"text": "Nothing here.", "entities": []},
    ]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    assert read_tagged_sentences(path) == [
        TaggedSentence(
            ("Zoë", "Müller", "flew", "to", "São", "Paulo", "."),
            ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"),
        ),
        TaggedSentence(("Nothing", "here", "."), ("O", "O", "O")),
    ]


@pytest.mark.parametrize(
    ("entities", "problem"),
    [
        ([{"start": 1, "end": 5, "label": "PER"}], "word boundaries"),
        ([{"start": 0, "end": 99, "label": "PER"}], "not within the text"),
        ([{"start": 0, "end": 4, "label": "B-PER"}], "type name"),
        ([{"start": 0, "end": 4, "label": "PER"}, {"start": 0, "end": 9, "label": "ORG"}], "overlaps"),
    ],
)
def test_jsonl_span_errors_name_the_line(tmp_path: Path, entities: list[object], problem: str) -> None:
    path = tmp_path / "spans.jsonl"
    good = json.dumps({"text": "Anna went home", "entities": []})
    bad = json.dumps({"text": "Anna went home", "entities": entities})
    path.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"spans.jsonl:3: .*{problem}"):
        read_tagged_sentences(path)


def test_file_fingerprint_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f.csv"
    path.write_bytes(b"text,label\nx,y\n")
    assert file_sha256(path) == hashlib.sha256(b"text,label\nx,y\n").hexdigest()


# --- the public data sets (skipped when ../shared/data is absent) -----------------------------
def test_shared_sentiment_files_read_whole() -> None:
    binary = read_text_examples(shared_file("sentiment/stsa.binary.train"))
    assert len(binary) == 6920 and {e.label for e in binary} == {"0", "1"}
    assert len(read_text_examples(shared_file("sentiment/stsa.binary.dev"))) == 872
    three = read_text_examples(shared_file("sentiment/sst3_collapsed_train.tsv"))
    assert len(three) == 8544 and {e.label for e in three} == {"negative", "neutral", "positive"}
    assert len(read_text_examples(shared_file("sentiment/sst3_collapsed_dev.tsv"))) == 1101


def test_shared_conll_reads_as_valid_iob2() -> None:
    train = read_tagged_sentences(shared_file("ner/eng.train"))
    dev = read_tagged_sentences(shared_file("ner/eng.testa"))
    assert (len(train), len(dev)) == (14041, 3250)
    types = set()
    for sentence in train + dev:
        previous = "O"
        for tag in sentence.tags:
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], sentence  # IOB2: I- only continues its own type
            types.add(tag[2:])
            previous = tag
    assert types - {""} == {"PER", "LOC", "ORG", "MISC"}
