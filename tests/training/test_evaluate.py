"""`textserve evaluate` on a model directory (served here on loopback) and on a running
service: the metrics are those of transformers' pipelines over the same file, mapped the
documented way; the latency block is present. Tiny seeded models, small generated files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textserve.commands.evaluate import word_tags
from textserve.training.metrics import classification_metrics, entity_metrics

from tests.token_model import build_token_model
from tests.training.conftest import sentiment_rows, tagged_sentences, write_conll

LABELS = ("negative", "positive")


def evaluate(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "textserve.cli", "evaluate", *argv, "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sequence_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from textserve.core.config import ModelConfig
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-seq")
    tokenizer = AutoTokenizer.from_pretrained(ModelConfig().path, model_max_length=64)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=2,
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    torch.manual_seed(1)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_word_tags_round_trip_gold_spans() -> None:
    from types import SimpleNamespace

    for sentence in tagged_sentences(20, seed=3):
        words = [word for word, _ in sentence]
        spans, position, current = [], 0, None
        for word, tag in sentence:
            if tag == "O":
                current = None
            elif tag.startswith("B-") or current is None:
                current = SimpleNamespace(label=tag[2:], start=position, end=position + len(word))
                spans.append(current)
            else:
                current.end = position + len(word)
            position += len(word) + 1
        assert word_tags(words, spans) == [tag for _, tag in sentence]


def test_sequence_metrics_equal_the_pipelines(sequence_model: Path, tmp_path: Path) -> None:
    from transformers import pipeline

    rows = [(text, LABELS[int(label == "positive")]) for text, label in sentiment_rows(40, seed=5)]
    data = tmp_path / "dev.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    report = evaluate("--model", str(sequence_model), "--data", str(data))
    pipe = pipeline("text-classification", model=str(sequence_model), device="cpu")
    predicted = [LABELS.index(answer["label"]) for answer in pipe([text for text, _ in rows])]
    expected = classification_metrics([LABELS.index(label) for _, label in rows], predicted, LABELS)
    assert report["metrics"] == expected
    assert (
        report["latency"]["requests"] == len(rows)
        and 0 < report["latency"]["p50_ms"] <= report["latency"]["p99_ms"]
    )


def test_entity_metrics_equal_the_pipelines(tmp_path: Path) -> None:
    from transformers import pipeline

    model = build_token_model(tmp_path / "ner")
    sentences = tagged_sentences(30, seed=7)
    data = write_conll(tmp_path / "dev.conll", sentences)
    report = evaluate("--task", "token-classification", "--model", str(model), "--data", str(data))
    pipe = pipeline("token-classification", model=str(model), aggregation_strategy="first", device="cpu")
    predicted = []
    for sentence in sentences:
        words = [word for word, _ in sentence]
        from types import SimpleNamespace

        found = [
            SimpleNamespace(label=e["entity_group"], start=e["start"], end=e["end"])
            for e in pipe(" ".join(words))
        ]
        predicted.append(word_tags(words, found))
    expected = entity_metrics([[tag for _, tag in sentence] for sentence in sentences], predicted)
    assert report["metrics"] == expected
    assert report["latency"]["requests"] == len(sentences)


def test_unknown_labels_are_an_error(sequence_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "dev.csv"
    data.write_text("text,label\ngood film,5\n")
    command = [sys.executable, "-m", "textserve.cli", "evaluate", "--model", str(sequence_model)]
    done = subprocess.run(
        [*command, "--data", str(data)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 2 and "--label-map" in done.stderr
