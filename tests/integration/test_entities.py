"""Named entities end to end: a token_classification classifier on real gRPC (loopback) with a
tiny config-built BERT (seeded random weights, MiniLM tokenizer, 64-token windows).

Parity: over 300 generated texts (CJK, emoji, accents, punctuation, every 10th several
windows long) every aggregation strategy gives exactly the entities of
`transformers.pipeline("token-classification")` (labels and code-point offsets; scores
within 1e-4), long texts against the pipeline with the same `stride`. Then the per-token
labels, the response cache, the Open Inference Protocol adapter read by tritonclient, the
CLI, and bad input named by field.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from textserve.classifier.config import ClassifierServiceConfig, EntitiesConfig
from textserve.core.config import LimitsConfig, ModelConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import classifier_pb2, classifier_pb2_grpc

from tests.support import loopback_server, start_host
from tests.token_model import LABELS, WINDOW, build_token_model, generated_texts

STRIDE = 16
STRATEGIES = {
    "none": classifier_pb2.AGGREGATION_STRATEGY_NONE,
    "simple": classifier_pb2.AGGREGATION_STRATEGY_SIMPLE,
    "first": classifier_pb2.AGGREGATION_STRATEGY_FIRST,
    "average": classifier_pb2.AGGREGATION_STRATEGY_AVERAGE,
    "max": classifier_pb2.AGGREGATION_STRATEGY_MAX,
}
TEXTS = generated_texts(300, seed=15)


@pytest.fixture(scope="module")
def token_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_token_model(tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="module")
async def address(token_model: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    from textserve.classifier.app import ClassifierApp
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig

    config = ClassifierServiceConfig(
        server=loopback_server(),
        kind="token_classification",
        model=ModelConfig(path=str(token_model), onnx_cache_dir=tmp_path_factory.mktemp("onnx")),
        limits=LimitsConfig(max_texts_per_request=64, max_text_chars=5000),
        entities=EntitiesConfig(stride=STRIDE, max_windows_per_text=12),
    )
    host: ServiceHost = await start_host([ClassifierApp(config, build_cache(CacheConfig(), "classifier"))])
    yield f"127.0.0.1:{host.port_of('classifier')}"
    await host.stop(grace=1.0)


async def extract(address: str, **fields: Any) -> classifier_pb2.ExtractEntitiesResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        return await stub.ExtractEntities(classifier_pb2.ExtractEntitiesRequest(**fields), timeout=120)


async def extract_all(address: str, texts: list[str], strategy: str) -> list[classifier_pb2.TextEntities]:
    chunks = [texts[i : i + 50] for i in range(0, len(texts), 50)]
    replies = await asyncio.gather(
        *(extract(address, texts=chunk, aggregation_strategy=STRATEGIES[strategy]) for chunk in chunks)
    )
    return [item for reply in replies for item in reply.results]


def reference(
    token_model: Path, strategy: str, texts: list[str], windows: list[int]
) -> list[list[dict[str, Any]]]:
    """The pipeline's entities: with `stride` for texts of several windows (not allowed with
    strategy none: those are left out, None)."""
    import warnings

    from transformers import pipeline

    pipe = pipeline(
        "token-classification", model=str(token_model), aggregation_strategy=strategy, device="cpu"
    )
    answers: list[Any] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text, count in zip(texts, windows, strict=True):
            if count > 1 and strategy == "none":
                answers.append(None)
            else:
                answers.append(pipe(text, stride=STRIDE) if count > 1 else pipe(text))
    return answers


@pytest.mark.parametrize("strategy", list(STRATEGIES))
async def test_every_strategy_equals_the_pipeline(token_model: Path, address: str, strategy: str) -> None:
    served = await extract_all(address, TEXTS, strategy)
    windows = [item.windows for item in served]
    assert sum(count > 1 for count in windows) >= 25  # the long texts do span several windows
    expected = reference(token_model, strategy, TEXTS, windows)
    key = "entity" if strategy == "none" else "entity_group"
    compared = found = 0
    for text, item, answer in zip(TEXTS, served, expected, strict=True):
        if answer is None:
            continue
        compared += 1
        got = [(e.label, e.start, e.end) for e in item.entities]
        assert got == [(a[key], a["start"], a["end"]) for a in answer], text
        np.testing.assert_allclose([e.score for e in item.entities], [a["score"] for a in answer], atol=1e-4)
        assert [e.text for e in item.entities] == [text[a["start"] : a["end"]] for a in answer]
        found += len(answer)
    assert compared >= 270 and found > 300


async def test_token_labels_cover_every_token_once(address: str) -> None:
    text = "Zoë met 李伟 in São Paulo 😀 and " + "Acme Corp reported from Tokyo " * 12
    reply = await extract(address, texts=[text], include_tokens=True)
    (item,) = reply.results
    assert item.windows > 1
    spans = [(t.start, t.end) for t in item.tokens]
    assert spans == sorted(set(spans)) and all(t.label in LABELS for t in item.tokens)
    assert all(text[t.start : t.end] == t.text and t.text.strip() for t in item.tokens)
    starts, ends = {t.start for t in item.tokens}, {t.end for t in item.tokens}
    assert item.entities and all(e.start in starts and e.end in ends for e in item.entities)


async def test_results_are_cached_by_strategy_and_text(address: str) -> None:
    text = "A text only the entity cache test sends: John Smith of Acme Corp."
    first = await extract(address, texts=[text], aggregation_strategy=STRATEGIES["first"])
    again = await extract(address, texts=[text], aggregation_strategy=STRATEGIES["first"])
    other = await extract(address, texts=[text], aggregation_strategy=STRATEGIES["max"])
    assert (first.usage.cached_texts, again.usage.cached_texts, other.usage.cached_texts) == (0, 1, 0)
    assert again.results[0] == first.results[0]


async def test_info_reports_the_kind_and_labels(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        info = await stub.ClassifierInfo(classifier_pb2.ClassifierInfoRequest(), timeout=30)
    assert info.kind == classifier_pb2.ClassifierInfoResponse.KIND_TOKEN_CLASSIFICATION
    assert tuple(info.labels) == LABELS and info.model.max_input_tokens == WINDOW


def field_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    return str(detail.field_violations[0].field)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"texts": []}, "texts"),
        ({"texts": ["ok", " "]}, "texts[1]"),
        ({"texts": ["x" * 5001]}, "texts[0]"),
        ({"texts": ["a"] * 65}, "texts"),
        ({"texts": ["word " * 900]}, "texts[0]"),  # over max_windows_per_text
        ({"texts": ["a"], "aggregation_strategy": 42}, "aggregation_strategy"),
        ({"texts": ["a"], "stride": WINDOW}, "stride"),
    ],
)
async def test_bad_input_names_the_field(address: str, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await extract(address, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field


async def test_classify_on_a_token_classifier_is_invalid(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(classifier_pb2.ClassifyRequest(texts=["John"]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ExtractEntities" in (caught.value.details() or "")


async def test_open_inference_protocol_entities(address: str) -> None:
    from tests.oip_client import official

    v2 = official()
    texts = TEXTS[:6]
    native = await extract(address, texts=texts, aggregation_strategy=STRATEGIES["average"])
    async with v2.aio.InferenceServerClient(url=address) as client:
        metadata = await client.get_model_metadata("classifier")
        assert [t.name for t in metadata.outputs] == [
            "entity_count", "entity_label", "entity_score", "entity_start", "entity_end", "entity_text",
        ]  # fmt: skip
        tensor = v2.grpc.InferInput("text_input", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        parameters = {"aggregation_strategy": "average"}
        result = await client.infer("classifier", [tensor], parameters=parameters)
        with pytest.raises(Exception, match="aggregation_strategy"):
            await client.infer("classifier", [tensor], parameters={"aggregation_strategy": "loudest"})
    counts = result.as_numpy("entity_count")
    assert counts.tolist() == [len(item.entities) for item in native.results]
    flat = [e for item in native.results for e in item.entities]
    assert [b.decode() for b in result.as_numpy("entity_label")] == [e.label for e in flat]
    assert result.as_numpy("entity_start").tolist() == [e.start for e in flat]
    assert result.as_numpy("entity_end").tolist() == [e.end for e in flat]
    assert [b.decode() for b in result.as_numpy("entity_text")] == [e.text for e in flat]
    np.testing.assert_allclose(result.as_numpy("entity_score"), [e.score for e in flat], rtol=1e-6)


async def test_cli_prints_the_entities(address: str) -> None:
    text = "John Smith visited São Paulo 😀"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "textserve.cli", "entities", text, "--address", address, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    import json

    printed = json.loads(out)
    native = await extract(address, texts=[text])
    assert printed == [
        [
            {
                "label": e.label,
                "score": pytest.approx(e.score, abs=1e-6),
                "start": e.start,
                "end": e.end,
                "text": e.text,
            }
            for e in native.results[0].entities
        ]
    ]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_backends_give_the_models_token_logits(
    token_model: Path, tmp_path_factory: pytest.TempPathFactory, backend: str
) -> None:
    """Both backends' per-token logits equal the transformers model's (padding cut off)."""
    import torch
    from textserve.runtime.encoder import EncoderModel
    from transformers import AutoModelForTokenClassification

    config = ModelConfig(
        path=str(token_model), backend=backend, onnx_cache_dir=tmp_path_factory.mktemp("onnx")
    )
    model = EncoderModel(config, "token-classification")
    reference = AutoModelForTokenClassification.from_pretrained(str(token_model)).eval()
    batch = [encoded.ids for encoded in model.tokenizer.encode_many(TEXTS[:8])]
    rows = model.run_batch(batch)
    assert model.info.labels == LABELS and model.info.backend == backend
    for ids, row in zip(batch, rows, strict=True):
        with torch.inference_mode():
            expected = reference(input_ids=torch.tensor([ids])).logits[0].numpy()
        assert row.shape == (len(ids), len(LABELS))
        np.testing.assert_allclose(row, expected, atol=1e-4)


def test_serve_all_gives_the_token_classifier_its_own_model(token_model: Path) -> None:
    """Beside the embedding app in one process, a token classifier still runs its own model."""
    from textserve.apps import build_apps
    from textserve.settings import Settings

    classifier = ClassifierServiceConfig(
        kind="token_classification", model=ModelConfig(path=str(token_model))
    )
    apps = build_apps(["embedding", "classifier"], Settings(classifier=classifier))
    (app,) = [app for app in apps if app.name == "classifier"]
    service = app.service  # type: ignore[attr-defined]
    assert service.entities is not None and service.scorer.home == "owned"
    assert service.entities.encoder.task == "token-classification"


def random_unicode_texts(count: int, seed: int) -> list[str]:
    """Seeded texts of code points from many scripts and odd characters (combining marks,
    zero-width joiners, full-width forms, symbols, astral emoji), spaces between runs."""
    import random

    rng = random.Random(seed)
    ranges = [
        (0x21, 0x7E), (0xC0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
        (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF01, 0xFF5E),
        (0x200B, 0x200D), (0x2000, 0x206F), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),
    ]  # fmt: skip
    texts = []
    while len(texts) < count:
        runs = []
        for _ in range(1 + rng.randrange(12)):
            low, high = rng.choice(ranges)
            runs.append("".join(chr(rng.randint(low, high)) for _ in range(1 + rng.randrange(6))))
        text = " ".join(runs)
        if text.strip():
            texts.append(text)
    return texts


@pytest.mark.parametrize("strategy", ["simple", "average"])
async def test_odd_unicode_equals_the_pipeline(token_model: Path, address: str, strategy: str) -> None:
    """Offsets stay exact on scripts, combining marks and zero-width characters."""
    texts = random_unicode_texts(60, seed=151)
    served = await extract_all(address, texts, strategy)
    expected = reference(token_model, strategy, texts, [item.windows for item in served])
    for text, item, answer in zip(texts, served, expected, strict=True):
        assert [(e.label, e.start, e.end) for e in item.entities] == [
            (a["entity_group"], a["start"], a["end"]) for a in answer
        ], text
        assert all(e.text == text[e.start : e.end] for e in item.entities)
        np.testing.assert_allclose([e.score for e in item.entities], [a["score"] for a in answer], atol=1e-4)


def test_tune_command_measures_the_token_model(
    token_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`textserve tune classifier` measures a token classifier's model with its own task."""
    import yaml
    from textserve.cli import main
    from textserve.tuning.result import TuningResult

    config = tmp_path / "config.yaml"
    output = tmp_path / "tuned-ner.json"
    model = {"path": str(token_model), "onnx_cache_dir": str(tmp_path / "onnx")}
    config.write_text(yaml.safe_dump({"classifier": {"kind": "token_classification", "model": model}}))
    args = ["tune", "classifier", "--config", str(config), "--output", str(output)]
    args += ["--seconds", "0.5", "--text-tokens", "8", "--batch-sizes", "1", "2"]
    assert main(args) == 0
    written = TuningResult.load(output)
    assert written.provenance.model == token_model.name and written.budget.max_batch_size in (1, 2)
    graphs = [folder.name for folder in (tmp_path / "onnx").iterdir()]
    assert graphs and all(name.startswith(f"{token_model.name}-token-classification-") for name in graphs)


async def test_encoder_caches_token_logits(token_model: Path, tmp_path: Path) -> None:
    """The Encoder's token verb through a response cache: the second call is answered from it,
    with the same [tokens, labels] arrays."""
    from textserve.core.cache import build_cache
    from textserve.core.config import BatcherConfig, CacheConfig
    from textserve.runtime.encoder_engine import Encoder, EncoderOptions
    from textserve.tuning.config import TuningConfig

    options = EncoderOptions(
        model=ModelConfig(path=str(token_model), onnx_cache_dir=tmp_path / "onnx"),
        batcher=BatcherConfig(),
        tuning=TuningConfig(),
    )
    encoder = Encoder(
        options, build_cache(CacheConfig(), "classifier"), service="classifier", task="token-classification"
    )
    await encoder.start()
    try:
        inputs = await encoder.tokenize(TEXTS[:5], None)
        first = await encoder.token_logits(inputs, None)
        assert encoder.cache is not None
        await encoder.cache.flush()  # the write-back runs in the background
        again = await encoder.token_logits(inputs, None)
        with pytest.raises(Exception, match="token-classification"):
            await encoder.embed(inputs, None)
    finally:
        await encoder.stop()
    assert first.cached == [False] * 5 and again.cached == [True] * 5
    for item, before, after in zip(inputs, first.rows, again.rows, strict=True):
        assert before.shape == after.shape == (len(item.ids), len(LABELS))
        np.testing.assert_array_equal(before, after)
