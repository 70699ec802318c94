"""Classifier and tokenizer logic without servers: scoring, cache entries, heads, training, wiring."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from textserve.classifier.linear_head import HeadFileError, LinearHead
from textserve.classifier.merging import CallMerger
from textserve.classifier.service import decode_entry, encode_entry, rank, softmax
from textserve.classifier.training import (
    Example,
    TrainingDataError,
    evaluate,
    format_report,
    read_examples,
    split,
    train,
)
from textserve.classifier.vector_source import Vectors
from textserve.classifier.zero_shot import Label, labels_fingerprint
from textserve.core.config import ConfigError
from textserve.core.errors import DeadlineExceeded, InvalidInput
from textserve.runtime.tokenization import kept_positions
from textserve.settings import load_settings

from tests.support import settle, wait_until


def test_softmax_and_rank() -> None:
    logits = np.array([[0.1, 0.5, 0.3]], dtype=np.float32)
    cold, warm = softmax(logits, 0.05)[0], softmax(logits, 1.0)[0]
    assert cold.sum() == pytest.approx(1.0) and warm.sum() == pytest.approx(1.0)
    assert cold[1] > warm[1] > 1 / 3
    assert rank(["a", "b", "c"], warm, 0) == [("b", warm[1]), ("c", warm[2]), ("a", warm[0])]
    assert [name for name, _ in rank(["a", "b", "c"], np.array([0.5, 0.25, 0.25]), 2)] == ["a", "b"]


def test_cache_entry_round_trip_and_shape_check() -> None:
    value = encode_entry(np.array([0.25, -1.5], dtype=np.float32), 17, True)
    logits, tokens, truncated = decode_entry(value, 2) or (None, 0, False)
    assert logits is not None and list(logits) == [0.25, -1.5] and tokens == 17 and truncated
    assert decode_entry(value, 3) is None
    assert decode_entry(None, 2) is None


def test_label_fingerprints_follow_content_and_order() -> None:
    a, b = Label("a", "first"), Label("b", "", ("x", "y"))
    assert labels_fingerprint([a, b]) != labels_fingerprint([b, a])
    assert labels_fingerprint([a, b]) == labels_fingerprint([Label("a", "first"), Label("b", "", ("x", "y"))])
    assert Label("a", "d").fingerprint() != Label("a", "e").fingerprint()
    assert Label("neutral").texts() == ["neutral"]


def test_kept_positions_keep_the_final_special_token() -> None:
    assert kept_positions(5, 0, True) == [0, 1, 2, 3, 4]
    assert kept_positions(5, 5, True) == [0, 1, 2, 3, 4]
    assert kept_positions(6, 4, True) == [0, 1, 2, 5]
    assert kept_positions(6, 4, False) == [0, 1, 2, 3]


def test_linear_head_round_trip(tmp_path: Path) -> None:
    head = LinearHead(
        np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32), ("x", "y", "z"), "m", "r", {"accuracy": 0.9}
    )
    path = tmp_path / "head.safetensors"
    head.save(path)
    loaded = LinearHead.load(path)
    assert loaded.labels == ("x", "y", "z") and loaded.dimensions == 4 and loaded.metrics == {"accuracy": 0.9}
    assert loaded.fingerprint() == head.fingerprint()
    np.testing.assert_array_equal(loaded.logits(np.eye(4, dtype=np.float32)), np.eye(4, 3))
    with pytest.raises(HeadFileError, match="does not exist"):
        LinearHead.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(HeadFileError, match=r"bad\.safetensors"):
        LinearHead.load(tmp_path / "bad.safetensors")


def test_read_examples_csv_and_jsonl(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text('text,label\n"hello, world",greeting\nbye,farewell\n')
    assert read_examples(data) == [Example("hello, world", "greeting"), Example("bye", "farewell")]
    lines = tmp_path / "d.jsonl"
    lines.write_text('{"text": "hi", "label": "greeting"}\n\n{"text": "x", "label": 3}\n')
    assert read_examples(lines) == [Example("hi", "greeting"), Example("x", "3")]
    lines.write_text('{"text": "", "label": "a"}\n')
    with pytest.raises(TrainingDataError, match=r"d\.jsonl:1"):
        read_examples(lines)
    data.write_text("sentence,category\na,b\n")
    with pytest.raises(TrainingDataError, match="header"):
        read_examples(data)


def test_split_is_stratified() -> None:
    labels = [0] * 10 + [1] * 5 + [2] * 2
    train_idx, test_idx = split(labels, 0.2, seed=1)
    assert sorted(train_idx + test_idx) == list(range(len(labels)))
    held = [labels[i] for i in test_idx]
    assert held.count(0) == 2 and held.count(1) == 1 and held.count(2) == 1


def test_training_separable_data_and_report() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8)
    vectors = np.concatenate([centers[i] + 0.05 * rng.standard_normal((20, 8)) for i in range(3)])
    examples = [Example(f"t{i}", label) for i, label in enumerate(["a"] * 20 + ["b"] * 20 + ["c"] * 20)]
    trained = train(vectors.astype(np.float32), examples, test_fraction=0.25)
    assert trained.labels == ("a", "b", "c")
    assert trained.report.accuracy == 1.0 and trained.report.macro_f1 == 1.0
    text = format_report(trained.report)
    assert "accuracy  1.0000" in text and "macro-F1  1.0000" in text and "confusion matrix" in text
    with pytest.raises(TrainingDataError, match="fewer than 2"):
        train(vectors[:21].astype(np.float32), examples[:21])


def test_evaluate_macro_f1() -> None:
    report = evaluate([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"], train_size=10)
    assert report.accuracy == 0.75
    assert report.confusion.tolist() == [[1, 0], [1, 2]]
    assert report.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)


def test_label_sets_are_validated_at_start() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        load_settings(environ={}, overrides={"classifier": {"label_sets": {"sentiment": [{"name": "only"}]}}})
    with pytest.raises(ConfigError, match="repeats label names"):
        load_settings(
            environ={},
            overrides={"classifier": {"label_sets": {"sentiment": [{"name": "a"}, {"name": "a"}]}}},
        )
    with pytest.raises(ConfigError, match="default_label_set"):
        load_settings(environ={}, overrides={"classifier": {"default_label_set": "topics"}})


def test_serve_all_shares_the_embedding_model_with_the_classifier() -> None:
    from textserve.apps import build_apps
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.merging import MergingVectorSource
    from textserve.classifier.vector_source import LocalVectorSource, RemoteVectorSource
    from textserve.embedding.app import EmbeddingApp

    settings = load_settings(environ={})
    apps = build_apps(["all"], settings)
    assert {"tokenizer", "embedding", "classifier"} <= {app.name for app in apps}
    embedding = next(app for app in apps if isinstance(app, EmbeddingApp))
    classifier = next(app for app in apps if isinstance(app, ClassifierApp))
    source = classifier.service.source
    assert isinstance(source, LocalVectorSource) and not source.owned
    assert source.encoder is embedding.service.encoder  # one model in memory

    (alone,) = build_apps(["classifier"], settings)
    assert isinstance(alone, ClassifierApp)
    assert isinstance(alone.service.source, LocalVectorSource) and alone.service.source.owned

    remote = load_settings(environ={"TEXTSERVE_CLASSIFIER__EMBEDDING_ADDRESS": "10.0.0.7:50052"})
    classifier = next(app for app in build_apps(["all"], remote) if isinstance(app, ClassifierApp))
    source = classifier.service.source
    assert isinstance(source, MergingVectorSource) and isinstance(source.inner, RemoteVectorSource)
    assert source.location == "10.0.0.7:50052"


class _Upstream:
    """An embed call that records what it was sent; `gate` holds calls until it is set."""

    def __init__(self, bad: str = "") -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.bad = bad

    async def __call__(
        self, texts: Sequence[str], deadline: float | None, truncate: bool | None, skip_cache: bool
    ) -> Vectors:
        self.calls.append(list(texts))
        await self.gate.wait()
        if self.bad in texts:
            raise InvalidInput(f"texts[{list(texts).index(self.bad)}]", "bad text")
        values = np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)
        return Vectors(values, [len(t) for t in texts], [False] * len(texts))


async def test_merger_sends_at_once_when_idle_and_merges_while_busy() -> None:
    upstream = _Upstream()
    merger = CallMerger(upstream, max_in_flight=1, max_texts=8)
    first = asyncio.create_task(merger.embed(["a"], None, None, False))
    await settle()
    later = [asyncio.create_task(merger.embed(["bb", "ccc"][: i + 1], None, None, False)) for i in range(2)]
    alone = asyncio.create_task(merger.embed(["reject-mode"], None, False, False))
    await settle()
    upstream.gate.set()
    results = await asyncio.gather(first, *later, alone)
    assert upstream.calls[0] == ["a"] and ["reject-mode"] in upstream.calls
    assert ["bb", "bb", "ccc"] in upstream.calls  # the two waiting requests went out together
    assert [r.values[:, 0].tolist() for r in results] == [[1.0], [2.0], [2.0, 3.0], [11.0]]
    assert merger.in_flight == 0


async def test_merger_retries_alone_after_invalid_argument_and_honours_deadlines() -> None:
    upstream = _Upstream(bad="bad")
    merger = CallMerger(upstream, max_in_flight=1, max_texts=8)
    first = asyncio.create_task(merger.embed(["x"], None, None, False))
    await settle()
    good = asyncio.create_task(merger.embed(["good"], None, None, False))
    bad = asyncio.create_task(merger.embed(["bad"], None, None, False))
    deadline = time.monotonic() + 0.01
    expired = asyncio.create_task(merger.embed(["late"], deadline, None, False))
    await settle()
    # Time passing the deadline is the behaviour under test (not synchronisation).
    await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
    await wait_until(expired.done)  # it gave up waiting (DeadlineExceeded) before a slot freed
    upstream.gate.set()
    await first
    assert (await good).tokens == [4]
    with pytest.raises(InvalidInput, match="bad text"):
        await bad
    with pytest.raises(DeadlineExceeded):
        await expired
    assert ["late"] not in upstream.calls
