"""Classifier service end to end: real gRPC servers on loopback, real models.

Zero-shot and linear-head classifiers are run both with vectors from the embedding
service over gRPC and with an in-process model; a sequence-classification model built
from a tiny config here is checked against transformers' own forward.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.config import ModelConfig, default_model_path
from textserve.transport.server import ServiceHost
from textserve.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2

from tests.support import free_port, loopback_server, model_config, start_host

PATHS = ["remote", "in-process"]

TOPIC_TRAINING = {
    "sports": (
        ["The team", "Our striker", "The goalkeeper", "The coach", "The referee", "The fans"],
        [
            "celebrated the win in the final match",
            "trained hard before the championship game",
            "scored a late goal in the tournament",
        ],
    ),
    "cooking": (
        ["The chef", "My grandmother", "The baker", "Our cook", "The waiter", "The kitchen staff"],
        [
            "baked fresh bread with butter and flour",
            "simmered the tomato soup with garlic",
            "seasoned the roasted chicken with herbs",
        ],
    ),
    "technology": (
        ["The engineer", "Our developer", "The startup", "The admin", "The programmer", "The team lead"],
        [
            "deployed the new software update to the servers",
            "fixed a bug in the database code",
            "installed a faster processor in the laptop",
        ],
    ),
}
HELD_OUT = [
    ("The striker kicked the ball past the defender and into the net.", "sports"),
    ("Fans cheered as the players ran onto the football pitch.", "sports"),
    ("She won a gold medal in the swimming race.", "sports"),
    ("The basketball match went into overtime.", "sports"),
    ("Stir the pasta sauce and add a pinch of salt.", "cooking"),
    ("He fried eggs and bacon for breakfast.", "cooking"),
    ("The cake needs forty minutes in a hot oven.", "cooking"),
    ("Chop the onions and carrots for the stew.", "cooking"),
    ("The app crashed after the latest operating system upgrade.", "technology"),
    ("She wrote a Python script to parse the log files.", "technology"),
    ("Our cloud servers need more memory and CPU.", "technology"),
    ("The network router dropped packets all night.", "technology"),
]
SENTIMENT = [
    ("I absolutely love this, it is fantastic and wonderful!", "positive"),
    ("This is terrible, I hate it and I am very angry.", "negative"),
    ("The train leaves from platform four at nine.", "neutral"),
]
TOPIC_LABELS = [
    classifier_pb2.LabelSpec(name="sports", description="A text about sports, games, athletes and matches."),
    classifier_pb2.LabelSpec(name="cooking", description="A text about cooking, food, recipes and kitchens."),
    classifier_pb2.LabelSpec(
        name="technology",
        description="A text about computers, software and technology.",
        examples=["a laptop"],
    ),
]


def classifier_config(**overrides: Any) -> ClassifierServiceConfig:
    values: dict[str, Any] = {"server": loopback_server(), "model": model_config()}
    values.update(overrides)
    return ClassifierServiceConfig(**values)


async def start_classifier(config: ClassifierServiceConfig) -> ServiceHost:
    from textserve.classifier.app import ClassifierApp
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig

    return await start_host([ClassifierApp(config, build_cache(CacheConfig(), "classifier"))])


def address_of(host: ServiceHost) -> str:
    return f"127.0.0.1:{host.port_of('classifier')}"


async def classify(address: str, request: classifier_pb2.ClassifyRequest) -> classifier_pb2.ClassifyResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        return await stub.Classify(request, timeout=60)


async def classify_error(address: str, request: classifier_pb2.ClassifyRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await classify(address, request)
    return caught.value


# --- zero-shot -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def zero_shot_hosts(embedding_address: str) -> AsyncIterator[dict[str, ServiceHost]]:
    """The default (sentiment) zero-shot classifier, over gRPC and in-process."""
    remote = await start_classifier(classifier_config(embedding_address=embedding_address))
    local = await start_classifier(classifier_config())
    yield {"remote": remote, "in-process": local}
    await remote.stop(grace=1.0)
    await local.stop(grace=1.0)


@pytest.fixture(params=PATHS)
def zero_shot(request: pytest.FixtureRequest, zero_shot_hosts: dict[str, ServiceHost]) -> str:
    return address_of(zero_shot_hosts[request.param])


async def test_zero_shot_sentiment(zero_shot: str) -> None:
    response = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=[t for t, _ in SENTIMENT]))
    assert [c.top_label for c in response.classifications] == [label for _, label in SENTIMENT]
    for item in response.classifications:
        scores = [s.score for s in item.scores]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert item.scores[0].label == item.top_label
        assert {s.label for s in item.scores} == {"positive", "negative", "neutral"}
        assert len(item.logits) == 3 and all(-1.0 <= v <= 1.0 for v in item.logits)
    assert response.model.name == "all-MiniLM-L6-v2"
    assert response.usage.input_tokens > 0


async def test_remote_and_in_process_agree(zero_shot_hosts: dict[str, ServiceHost]) -> None:
    request = classifier_pb2.ClassifyRequest(texts=[t for t, _ in SENTIMENT + HELD_OUT], skip_cache=True)
    remote, local = [await classify(address_of(zero_shot_hosts[p]), request) for p in PATHS]
    for a, b in zip(remote.classifications, local.classifications, strict=True):
        assert a.top_label == b.top_label
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    # The precision in force: the in-process encoder's, or the one the embedding service reports.
    assert remote.model.precision == local.model.precision == "fp32"


async def test_request_brings_its_own_labels(zero_shot: str) -> None:
    response = await classify(
        zero_shot,
        classifier_pb2.ClassifyRequest(texts=[t for t, _ in HELD_OUT], labels=TOPIC_LABELS, top_k=2),
    )
    predicted = [c.top_label for c in response.classifications]
    correct = sum(p == label for p, (_, label) in zip(predicted, HELD_OUT, strict=True))
    assert correct >= 10, predicted
    assert all(len(c.scores) == 2 and len(c.logits) == 3 for c in response.classifications)


async def test_temperature_sharpens_scores(zero_shot: str) -> None:
    text = [SENTIMENT[0][0]]
    cold = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=text, temperature=0.01))
    warm = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=text, temperature=1.0))
    assert cold.classifications[0].top_label == warm.classifications[0].top_label
    assert cold.classifications[0].scores[0].score > warm.classifications[0].scores[0].score
    assert list(cold.classifications[0].logits) == pytest.approx(
        list(warm.classifications[0].logits), abs=1e-6
    )


async def test_results_are_cached_unless_skipped(zero_shot: str) -> None:
    texts = [f"I really enjoyed the {uuid.uuid4().hex[:8]} concert"] * 1 + [f"note {uuid.uuid4().hex[:8]}"]
    first = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=texts))
    again = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=texts, temperature=0.5))
    skipped = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=texts, skip_cache=True))
    assert first.usage.cached_texts == 0
    assert again.usage.cached_texts == 2
    assert skipped.usage.cached_texts == 0
    assert list(again.classifications[0].logits) == pytest.approx(list(first.classifications[0].logits))
    # A different label set is a different cache entry.
    other = await classify(zero_shot, classifier_pb2.ClassifyRequest(texts=texts, labels=TOPIC_LABELS))
    assert other.usage.cached_texts == 0


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (classifier_pb2.ClassifyRequest(), "texts", "at least one"),
        (classifier_pb2.ClassifyRequest(texts=["ok", ""]), "texts[1]", "empty"),
        (classifier_pb2.ClassifyRequest(texts=["a"] * 300), "texts", "max_texts_per_request=256"),
        (classifier_pb2.ClassifyRequest(texts=["y" * 100_001]), "texts[0]", "max_text_chars=100000"),
        (classifier_pb2.ClassifyRequest(texts=["a"], label_set="topics"), "label_set", "unknown label set"),
        (
            classifier_pb2.ClassifyRequest(texts=["a"], labels=[classifier_pb2.LabelSpec(name="only")]),
            "labels",
            "at least 2",
        ),
        (
            classifier_pb2.ClassifyRequest(
                texts=["a"], labels=[classifier_pb2.LabelSpec(name="x"), classifier_pb2.LabelSpec(name=" ")]
            ),
            "labels[1].name",
            "empty",
        ),
        (
            classifier_pb2.ClassifyRequest(
                texts=["a"], labels=[classifier_pb2.LabelSpec(name="x"), classifier_pb2.LabelSpec(name="x")]
            ),
            "labels[1].name",
            "repeats labels[0]",
        ),
        (
            classifier_pb2.ClassifyRequest(texts=["a"], labels=TOPIC_LABELS, label_set="sentiment"),
            "labels",
            "not both",
        ),
        (
            classifier_pb2.ClassifyRequest(
                texts=["a"], labels=[classifier_pb2.LabelSpec(name=f"l{i}") for i in range(65)]
            ),
            "labels",
            "max_labels_per_request=64",
        ),
        (classifier_pb2.ClassifyRequest(texts=["a"], temperature=-1.0), "temperature", "(0, 100]"),
        (
            classifier_pb2.ClassifyRequest(
                texts=["word " * 400], truncation=common_pb2.TRUNCATION_POLICY_REJECT
            ),
            "texts[0]",
            "max_tokens_per_text=256",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    zero_shot: str, request_: classifier_pb2.ClassifyRequest, field: str, words: str
) -> None:
    error = await classify_error(zero_shot, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field + ":"), error.details()
    assert words in error.details()


async def test_classifier_info(zero_shot: str) -> None:
    async with grpc.aio.insecure_channel(zero_shot) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        info = await stub.ClassifierInfo(classifier_pb2.ClassifierInfoRequest(), timeout=30)
    assert info.kind == classifier_pb2.ClassifierInfoResponse.KIND_ZERO_SHOT
    assert list(info.labels) == ["positive", "negative", "neutral"]
    assert list(info.label_sets) == ["sentiment"]
    assert info.model.name == "all-MiniLM-L6-v2"
    assert info.limits.max_texts_per_request == 256
    assert info.max_labels_per_request == 64
    assert info.default_temperature == pytest.approx(0.05)


async def test_classify_command(
    zero_shot_hosts: dict[str, ServiceHost], capsys: pytest.CaptureFixture[str]
) -> None:
    from textserve.cli import build_parser

    address = address_of(zero_shot_hosts["remote"])
    args = build_parser().parse_args(["classify", SENTIMENT[0][0], "--address", address])
    assert await args.handler(args) == 0
    out = capsys.readouterr().out
    assert ": positive" in out and "negative" in out and "neutral" in out


# --- embedding service down and back --------------------------------------------------------
async def test_unreachable_embedding_is_unavailable_then_recovers() -> None:
    from textserve.embedding.app import EmbeddingApp

    from tests.support import embedding_config

    port = free_port()
    classifier = await start_classifier(
        classifier_config(embedding_address=f"127.0.0.1:{port}", embedding_wait_s=0)
    )
    request = classifier_pb2.ClassifyRequest(texts=["I love it"], skip_cache=True)
    embedding: ServiceHost | None = None
    try:
        error = await classify_error(address_of(classifier), request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert f"embedding service at 127.0.0.1:{port}" in error.details()

        embedding = await start_host([EmbeddingApp(embedding_config(server=loopback_server(port=port)))])
        response = None
        for _ in range(300):  # the channel reconnects with a backoff of at most 2 s
            try:
                response = await classify(address_of(classifier), request)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.1)
        assert response is not None and response.classifications[0].top_label == "positive"

        await embedding.stop(grace=0.5)
        embedding = None
        error = await classify_error(address_of(classifier), request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if embedding is not None:
            await embedding.stop(grace=0.5)
        await classifier.stop(grace=1.0)


# --- linear head ---------------------------------------------------------------------------
def training_rows() -> list[tuple[str, str]]:
    return [
        (f"{subject} {predicate}.", label)
        for label, (subjects, predicates) in TOPIC_TRAINING.items()
        for subject in subjects
        for predicate in predicates
    ]


@pytest.fixture(scope="module")
async def trained_head(tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path) -> tuple[Path, str]:
    """`textserve train-classifier --data topics.csv` (in-process embeddings); returns head and output."""
    import contextlib
    import io

    from textserve.cli import build_parser

    folder = tmp_path_factory.mktemp("head")
    data = folder / "topics.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(training_rows())
    config = folder / "config.yaml"
    config.write_text(f"classifier:\n  model:\n    onnx_cache_dir: {onnx_cache_dir}\n")
    out = folder / "topics.safetensors"
    args = build_parser().parse_args(
        ["train-classifier", "--data", str(data), "--out", str(out), "--config", str(config)]
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert await args.handler(args) == 0
    return out, printed.getvalue()


async def test_training_prints_held_out_evaluation(trained_head: tuple[Path, str]) -> None:
    from textserve.classifier.linear_head import LinearHead

    path, output = trained_head
    assert "read 54 examples with 3 labels" in output
    assert "accuracy" in output and "macro-F1" in output and "confusion matrix" in output
    head = LinearHead.load(path)
    assert head.labels == ("cooking", "sports", "technology")
    assert head.dimensions == 384 and head.model_name == "all-MiniLM-L6-v2"
    assert head.metrics["accuracy"] >= 0.8


@pytest.fixture(scope="module")
async def head_hosts(
    trained_head: tuple[Path, str], embedding_address: str
) -> AsyncIterator[dict[str, ServiceHost]]:
    path, _ = trained_head
    remote = await start_classifier(
        classifier_config(kind="linear_head", head_path=path, embedding_address=embedding_address)
    )
    local = await start_classifier(classifier_config(kind="linear_head", head_path=path))
    yield {"remote": remote, "in-process": local}
    await remote.stop(grace=1.0)
    await local.stop(grace=1.0)


@pytest.mark.parametrize("path", PATHS)
async def test_trained_head_scores_held_out_texts_well_above_chance(
    head_hosts: dict[str, ServiceHost], path: str
) -> None:
    address = address_of(head_hosts[path])
    response = await classify(address, classifier_pb2.ClassifyRequest(texts=[t for t, _ in HELD_OUT]))
    predicted = [c.top_label for c in response.classifications]
    accuracy = np.mean([p == label for p, (_, label) in zip(predicted, HELD_OUT, strict=True)])
    assert accuracy >= 0.75, predicted  # chance is 1/3
    assert all({s.label for s in c.scores} == set(TOPIC_TRAINING) for c in response.classifications)
    assert response.model.precision == "fp32"
    for request_, field in [
        (classifier_pb2.ClassifyRequest(texts=["a"], label_set="sentiment"), "label_set"),
        (classifier_pb2.ClassifyRequest(texts=["a"], labels=TOPIC_LABELS), "labels"),
        (classifier_pb2.ClassifyRequest(texts=["a"], temperature=0.5), "temperature"),
    ]:
        error = await classify_error(address, request_)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(field + ":")


async def test_head_for_other_vectors_fails_at_start(tmp_path: Path, embedding_address: str) -> None:
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.linear_head import LinearHead
    from textserve.classifier.service import HeadMismatch

    path = tmp_path / "small.safetensors"
    LinearHead(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), ("a", "b"), "other", "r").save(path)
    app = ClassifierApp(
        classifier_config(kind="linear_head", head_path=path, embedding_address=embedding_address)
    )
    with pytest.raises(HeadMismatch, match="takes 4-dimensional vectors"):
        await app.start()
    await app.stop()


# --- sequence classification ---------------------------------------------------------------
ID2LABEL = {0: "alpha", 1: "beta", 2: "gamma"}


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT sequence classifier with the default model's tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    target = tmp_path_factory.mktemp("models") / "tiny-bert-cls"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,
        num_labels=3,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(str(target))
    source = Path(default_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, target / name)
    return target


async def test_sequence_classification_matches_transformers(
    tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [t for t, _ in SENTIMENT] + ["x", "word " * 100]
    model = ModelConfig(path=str(tiny_classifier_dir), onnx_cache_dir=tmp_path / "onnx")
    host = await start_classifier(classifier_config(kind="sequence_classification", model=model))
    try:
        address = address_of(host)
        response = await classify(address, classifier_pb2.ClassifyRequest(texts=texts))
        async with grpc.aio.insecure_channel(address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            info = await stub.ClassifierInfo(classifier_pb2.ClassifierInfoRequest(), timeout=30)
        errors = [
            await classify_error(address, classifier_pb2.ClassifyRequest(texts=["a"], label_set="sentiment")),
            await classify_error(
                address,
                classifier_pb2.ClassifyRequest(
                    texts=["word " * 100], truncation=common_pb2.TRUNCATION_POLICY_REJECT
                ),
            ),
        ]
    finally:
        await host.stop(grace=1.0)

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_classifier_dir))
    reference = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier_dir)).eval()
    for text, item in zip(texts, response.classifications, strict=True):
        encoded = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            logits = reference(**encoded).logits[0].numpy()
        np.testing.assert_allclose(np.asarray(item.logits), logits, rtol=1e-3, atol=1e-4)
        assert item.top_label == ID2LABEL[int(np.argmax(logits))]
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        by_label = {s.label: s.score for s in item.scores}
        np.testing.assert_allclose([by_label[ID2LABEL[i]] for i in range(3)], probabilities, atol=1e-5)
    assert response.classifications[-1].scores and response.usage.truncated_texts == 1
    assert info.kind == classifier_pb2.ClassifierInfoResponse.KIND_SEQUENCE_CLASSIFICATION
    assert list(info.labels) == ["alpha", "beta", "gamma"]
    assert info.model.backend == "onnxruntime" and info.model.name == "tiny-bert-cls"
    assert info.model.precision == response.model.precision == "fp32"
    assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT and errors[0].details().startswith(
        "label_set:"
    )
    assert errors[1].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors[1].details().startswith("texts[0]:") and "max_tokens_per_text=64" in errors[1].details()


# --- the `make run` layout --------------------------------------------------------------------
async def test_embedding_and_classifier_in_one_process_share_the_model(onnx_cache_dir: Path) -> None:
    """`serve embedding classifier` (as `serve all`): the classifier uses the embedding app's model."""
    from textserve.apps import build_apps
    from textserve.settings import load_settings
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    loopback = {"host": "127.0.0.1", "port": 0, "grace_period_s": 1.0}
    settings = load_settings(
        environ={},
        overrides={
            "embedding": {"server": loopback, "model": {"onnx_cache_dir": str(onnx_cache_dir)}},
            "classifier": {"server": loopback},
        },
    )
    host = await start_host(build_apps(["embedding", "classifier"], settings))
    try:
        response = await classify(
            f"127.0.0.1:{host.port_of('classifier')}",
            classifier_pb2.ClassifyRequest(texts=[t for t, _ in SENTIMENT], skip_cache=True),
        )
        assert [c.top_label for c in response.classifications] == [label for _, label in SENTIMENT]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as channel:
            embedded = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
                embedding_pb2.EmbedRequest(texts=["still serving embeddings"]), timeout=30
            )
        assert len(embedded.embeddings[0].values) == 384
    finally:
        await host.stop(grace=1.0)
