"""`textserve fine-tune` end to end on tiny data with a tiny model: the written directory loads
in transformers, its predictions are the pipeline's, its metadata is complete, and bad input
or an interrupt writes nothing."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from textserve.training.output import METADATA_FILE, read_metadata

from tests.shared_data import shared_file
from tests.training.conftest import sentiment_rows, tagged_sentences, write_conll

FAST = ["--epochs", "2", "--batch-size", "16", "--max-seq-length", "32", "--seed", "7"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`textserve <argv>` in-process: (exit code, stdout, stderr)."""
    from textserve.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def leftovers(folder: Path) -> list[str]:
    """Staging folders left in a destination's parent."""
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("seq")
    train = write_csv(folder / "train.csv", sentiment_rows(64, seed=1))
    dev = write_csv(folder / "dev.csv", sentiment_rows(24, seed=2))
    out = folder / "model"
    code, stdout, stderr = run_cli(
        "fine-tune", "--task", "sequence-classification", "--data", str(train), "--dev", str(dev),
        "--model", str(tiny_model), "--out", str(out), *FAST,
    )  # fmt: skip
    assert code == 0, stderr
    return {"folder": folder, "train": train, "dev": dev, "out": out, "stdout": stdout, "stderr": stderr}


def test_sequence_directory_loads_and_predicts_like_the_pipeline(sequence_run: dict[str, Any]) -> None:
    from textserve.training.data import read_text_examples
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out: Path = sequence_run["out"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "training_args.bin").exists() and not (out / "scratch").exists()

    metadata = read_metadata(out)
    texts = [example.text for example in read_text_examples(sequence_run["dev"])]
    classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(out))
    predicted = [item["label"] for item in classify(texts)]
    confusion = metadata["metrics"]["confusion_matrix"]
    assert [sum(column) for column in zip(*confusion, strict=True)] == [
        predicted.count("negative"),
        predicted.count("positive"),
    ]
    assert leftovers(sequence_run["folder"]) == []


def test_sequence_predictions_equal_the_pipeline(tmp_path: Path, tiny_model: Path) -> None:
    from textserve.training.finetune import FineTuneRequest, fine_tune
    from textserve.training.hyper import HyperParameters
    from transformers import pipeline

    train = write_csv(tmp_path / "train.csv", sentiment_rows(32, seed=4))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(16, seed=5))
    result = fine_tune(
        FineTuneRequest(
            task="sequence-classification",
            data=train,
            dev=dev,
            out=tmp_path / "m",
            model=str(tiny_model),
            hyper=HyperParameters(epochs=1, batch_size=16, max_seq_length=32),
            progress=False,
        )
    )
    classify = pipeline("text-classification", model=str(result.out))
    texts = [text for text, _ in sentiment_rows(16, seed=5)]
    assert [item["label"] for item in classify(texts)] == result.dev_predictions


def test_sequence_metadata(sequence_run: dict[str, Any]) -> None:
    metadata = read_metadata(sequence_run["out"])
    assert metadata["task"] == "sequence-classification"
    assert metadata["labels"] == ["negative", "positive"]
    train = metadata["data"]["train"]
    assert train["sha256"] == hashlib.sha256(sequence_run["train"].read_bytes()).hexdigest()
    assert train["examples"] == 64 and metadata["data"]["dev"]["examples"] == 24
    metrics = metadata["metrics"]
    assert metrics["split"] == "dev" and metrics["examples"] == 24
    for key in ("accuracy", "macro_f1", "macro_recall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_class_recall"]) == {"negative", "positive"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 24
    hp = metadata["hyperparameters"]
    assert (hp["epochs"], hp["batch_size"], hp["max_seq_length"], hp["seed"]) == (2.0, 16, 32, 7)
    assert hp["fp16_used"] is False and hp["device"] == "cpu"
    assert hp["class_weighted"] is True and hp["class_weights"] == {"negative": 1.0, "positive": 1.0}
    assert metadata["training_seconds"] > 0 and metadata["training"]["optimizer_steps"] == 8
    assert metadata["base_model"]["revision"]
    stdout = sequence_run["stdout"]
    assert "accuracy" in stdout and "macro-F1" in stdout and "per-class recall" in stdout
    assert "confusion matrix" in stdout and f"wrote {sequence_run['out']}" in stdout
    assert "fine-tune" in sequence_run["stderr"] and "ex/s" in sequence_run["stderr"]  # the progress bar


def test_held_out_dev_when_no_dev_file(tmp_path: Path, tiny_model: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40, seed=1))
    out = tmp_path / "m"
    code, _, stderr = run_cli(
        "fine-tune", "--task", "sequence-classification", "--data", str(train), "--model", str(tiny_model),
        "--out", str(out), "--dev-fraction", "0.25", "--max-steps", "1", "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    dev = read_metadata(out)["data"]["dev"]
    assert dev["path"] is None and dev["examples"] == 10 and "0.25 of the training file" in dev["held_out"]


@pytest.mark.parametrize("problem", ["malformed", "unseen-dev-label", "exists"])
def test_bad_input_writes_nothing(tmp_path: Path, tiny_model: Path, problem: str) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(8, seed=2))
    out = tmp_path / "out" / "model"
    expected = ""
    if problem == "malformed":
        dev.write_text(dev.read_text() + "broken line without label column\n", encoding="utf-8")
        expected = "dev.csv:10:"
    elif problem == "unseen-dev-label":
        write_csv(dev, [("what a film", "mixed")])
        expected = "dev labels ['mixed'] do not occur"
    else:
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
        expected = "exists and is not empty"
    code, _, stderr = run_cli(
        "fine-tune", "--task", "sequence-classification", "--data", str(train), "--dev", str(dev),
        "--model", str(tiny_model), "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 2 and expected in stderr and "nothing was written" in stderr
    if problem == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_during_training_leaves_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    import os
    import signal
    import time

    from transformers import Trainer

    def interrupted(self: Trainer, *args: object, **kwargs: object) -> None:
        assert any(".partial-" in p.name for p in tmp_path.iterdir())  # staging exists meanwhile
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises KeyboardInterrupt before this ends
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    out = tmp_path / "model"
    code, _, stderr = run_cli(
        "fine-tune", "--task", "sequence-classification", "--data", str(train), "--model", str(tiny_model),
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 130 and "interrupted: nothing was written" in stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_overwrite_replaces_the_directory(tmp_path: Path, tiny_model: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, stderr = run_cli(
        "fine-tune", "--task", "sequence-classification", "--data", str(train), "--model", str(tiny_model),
        "--out", str(out), "--overwrite", "--max-steps", "1", "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    assert not (out / "old.txt").exists() and (out / METADATA_FILE).is_file()
    assert leftovers(tmp_path) == []


# --- token classification ------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("tok")
    train = write_conll(folder / "train.conll", tagged_sentences(48, seed=1), iob1=True)
    dev_sentences = tagged_sentences(16, seed=2)
    dev = write_conll(folder / "dev.conll", dev_sentences, iob1=True)
    out = folder / "ner"
    code, stdout, stderr = run_cli(
        "fine-tune", "--task", "token-classification", "--data", str(train), "--dev", str(dev),
        "--model", str(tiny_model), "--out", str(out), "--no-progress", *FAST,
    )  # fmt: skip
    assert code == 0, stderr
    return {"folder": folder, "train": train, "dev": dev_sentences, "out": out, "stdout": stdout}


def test_token_directory_and_metadata(token_run: dict[str, Any]) -> None:
    from transformers import AutoModelForTokenClassification

    out: Path = token_run["out"]
    model = AutoModelForTokenClassification.from_pretrained(out)
    tags = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert [model.config.id2label[i] for i in range(len(tags))] == tags
    metadata = read_metadata(out)
    assert metadata["task"] == "token-classification" and metadata["labels"] == tags
    assert metadata["data"]["train"]["sha256"] == hashlib.sha256(token_run["train"].read_bytes()).hexdigest()
    assert metadata["data"]["train"]["examples"] == 48
    metrics = metadata["metrics"]
    assert metrics["sentences"] == 16 and set(metrics["per_type"]) <= {"LOC", "ORG", "PER"}
    for key in ("precision", "recall", "f1", "token_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert "seqeval, strict IOB2" in token_run["stdout"]
    assert leftovers(token_run["folder"]) == []


def test_token_predictions_equal_the_pipeline(tmp_path: Path, tiny_model: Path) -> None:
    from textserve.training.finetune import FineTuneRequest, fine_tune
    from textserve.training.hyper import HyperParameters
    from transformers import AutoTokenizer, pipeline

    dev_sentences = tagged_sentences(12, seed=6)
    result = fine_tune(
        FineTuneRequest(
            task="token-classification",
            data=write_conll(tmp_path / "train.conll", tagged_sentences(24, seed=5)),
            dev=write_conll(tmp_path / "dev.conll", dev_sentences),
            out=tmp_path / "ner",
            model=str(tiny_model),
            hyper=HyperParameters(epochs=1, batch_size=8, max_seq_length=32),
            progress=False,
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(result.out)
    tag = pipeline(
        "token-classification", model=str(result.out), aggregation_strategy="none", ignore_labels=[]
    )
    for sentence, predicted in zip(dev_sentences, result.dev_predictions, strict=True):
        words = [word for word, _ in sentence]
        by_index = {item["index"]: item["entity"] for item in tag(" ".join(words))}
        word_ids = tokenizer(words, is_split_into_words=True).word_ids()
        first_pieces = [i for i, w in enumerate(word_ids) if w is not None and w != word_ids[i - 1]]
        assert [by_index[i] for i in first_pieces] == predicted


def test_real_conll_subset(tmp_path: Path, tiny_model: Path) -> None:
    """The CoNLL-2003 files themselves (4 columns, IOB1, -DOCSTART-): 40 sentences, 1 step."""
    source = shared_file("ner/eng.train").read_text(encoding="utf-8").split("\n\n")
    train = tmp_path / "eng.small"
    train.write_text("\n\n".join(source[:41]) + "\n", encoding="utf-8")
    dev_source = shared_file("ner/eng.testa").read_text(encoding="utf-8").split("\n\n")
    dev = tmp_path / "testa.small"
    dev.write_text("\n\n".join(dev_source[:21]) + "\n", encoding="utf-8")
    code, stdout, stderr = run_cli(
        "fine-tune", "--task", "token-classification", "--data", str(train), "--dev", str(dev),
        "--model", str(tiny_model), "--out", str(tmp_path / "ner"), "--max-steps", "1", "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    assert "entity precision" in stdout


def test_the_runtime_serves_the_directory_as_written(sequence_run: dict[str, Any], tmp_path: Path) -> None:
    """The classifier's sequence_classification kind loads the directory through the shared
    runtime (ONNX export): labels from id2label, logits equal to transformers'."""
    import numpy as np
    import torch
    from textserve.core.config import ModelConfig
    from textserve.runtime.encoder import EncoderModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out: Path = sequence_run["out"]
    encoder = EncoderModel(
        ModelConfig(path=str(out), onnx_cache_dir=tmp_path), task="sequence-classification"
    )
    assert encoder.info.labels == ("negative", "positive")
    texts = [text for text, _ in sentiment_rows(6, seed=9)]
    tokenizer = AutoTokenizer.from_pretrained(out)
    served = np.stack(encoder.run_batch([tokenizer(text)["input_ids"] for text in texts]))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_weighted_loss_is_the_balanced_cross_entropy() -> None:
    import torch
    from textserve.training.data import TextExample
    from textserve.training.sequence import balanced_weights, weighted_loss

    examples = [TextExample("t", label) for label in ["a", "a", "a", "b"]]
    assert balanced_weights(examples, ["a", "b"]) == pytest.approx([4 / 6, 2.0])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert weighted_loss([1.0, 1.0])({"logits": logits}, labels).item() == pytest.approx(plain.item())
    each = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (0.5 * each[0] + 2.0 * each[1] + 2.0 * each[2]) / 6  # summed, over the accumulated count
    got = weighted_loss([0.5, 2.0])({"logits": logits}, labels, num_items_in_batch=6)
    assert got.item() == pytest.approx(expected.item())
