"""Batch-budget tuning on the real model: measurement, `textserve tune`, and services that use it.

Tiny grids and sub-second measurements keep this fast; nothing here asserts on timings.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from textserve.core.metrics import REGISTRY
from textserve.runtime.encoder import EncoderModel
from textserve.transport.server import ServiceHost
from textserve.tuning.config import TuningConfig
from textserve.tuning.measure import SyntheticTexts, grid_lengths, measure_curve, tune
from textserve.tuning.result import TunedBudgetError, TuningResult, hardware_description
from textserve.tuning.startup import startup_budget
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.support import embedding_config, loopback_server, model_config, start_host

TINY = TuningConfig(text_tokens=[8, 48], batch_sizes=[1, 2, 4], seconds=0.5, min_repeats=2, concurrency=8)


@pytest.fixture(scope="module")
def model(onnx_cache_dir: Path) -> Iterator[EncoderModel]:
    yield EncoderModel(model_config(), "embedding")


@pytest.fixture(scope="module")
def tuned(model: EncoderModel) -> TuningResult:
    return tune(model, TINY)


def test_synthetic_texts_have_exact_lengths_from_the_vocabulary(model: EncoderModel) -> None:
    synthetic = SyntheticTexts(model.tokenizer, seed=1)
    specials = model.tokenizer.special_ids
    for length in (2, 3, 17, 256):
        ids = synthetic.ids(length)
        assert len(ids) == length
        assert all(0 <= i < model.tokenizer.hf.vocab_size for i in ids)
        assert not specials & set(ids[1:-1])
    framed = model.tokenizer.encode_many(["x"])[0].ids
    ids = synthetic.ids(10)
    assert (ids[0], ids[-1]) == (framed[0], framed[-1])  # [CLS] ... [SEP] like real texts
    assert len(model.run_batch(synthetic.batch(12, 3))) == 3


def test_grid_lengths_reach_the_model_maximum() -> None:
    assert grid_lengths([], 256) == [16, 32, 64, 128, 256]
    assert grid_lengths([], 384) == [16, 32, 64, 128, 256, 384]
    assert grid_lengths([8, 1000, 48], 256) == [8, 48, 256]


def test_measured_curve_is_consistent(model: EncoderModel) -> None:
    curve = measure_curve(model, [8, 48], [1, 2, 4], latency_ceiling_ms=10_000, seconds=0.3, min_repeats=2)
    assert {(p.text_tokens, p.batch_size) for p in curve} == {(n, b) for n in (8, 48) for b in (1, 2, 4)}
    for point in curve:
        assert point.batch_tokens == point.text_tokens * point.batch_size
        assert point.batch_latency_ms > 0 and point.repeats >= 2
        assert point.texts_per_second == pytest.approx(point.batch_size / point.batch_latency_ms * 1000)


def test_sizes_past_the_ceiling_are_not_measured(model: EncoderModel) -> None:
    curve = measure_curve(model, [48], [1, 2, 4], latency_ceiling_ms=0.001, seconds=0.1, min_repeats=1)
    assert [p.batch_size for p in curve] == [1]


def test_tune_describes_the_model_and_device(model: EncoderModel, tuned: TuningResult) -> None:
    info = model.info
    assert tuned.provenance.mismatch(info.name, info.revision, info.backend, info.device) is None
    assert tuned.provenance.hardware == hardware_description(info.device)
    assert tuned.budget.max_batch_size in (1, 2, 4) and tuned.budget.max_batch_tokens >= 8
    assert tuned.budget.source == "autotune"
    assert tuned.mix_text_tokens == [8, 48] and tuned.curve


def test_startup_budget_uses_a_matching_file_and_skips_another_models(
    model: EncoderModel, tuned: TuningResult, tmp_path: Path
) -> None:
    path = tmp_path / "tuned.json"
    assert startup_budget(model, path, autotune=False, tuning=TINY) is None  # no file: configured budget
    tuned.save(path)
    chosen = startup_budget(model, path, autotune=False, tuning=TINY)
    assert chosen is not None and chosen.budget.source == f"tuned:{path}"
    assert chosen == tuned.with_source(f"tuned:{path}")
    replace(tuned, provenance=replace(tuned.provenance, revision="other")).save(path)
    assert startup_budget(model, path, autotune=False, tuning=TINY) is None
    # With autotune, a file from other hardware is measured again and rewritten.
    replace(tuned, provenance=replace(tuned.provenance, hardware="cpu: elsewhere x64")).save(path)
    assert startup_budget(model, path, autotune=False, tuning=TINY) is not None  # used, with a warning
    again = startup_budget(model, path, autotune=True, tuning=TINY)
    assert again is not None and again.provenance.hardware == hardware_description(model.info.device)
    assert again.budget.source == f"tuned:{path}"
    assert TuningResult.load(path).provenance.hardware == again.provenance.hardware
    path.write_text("{}")
    with pytest.raises(TunedBudgetError, match=re.escape(str(path))):
        startup_budget(model, path, autotune=True, tuning=TINY)


def test_tune_command_writes_the_file_prints_the_table_and_plots(
    tmp_path: Path, onnx_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from textserve.cli import main

    config = tmp_path / "config.yaml"
    output = tmp_path / "tuned.json"
    config.write_text(yaml.safe_dump({"embedding": {"model": {"onnx_cache_dir": str(onnx_cache_dir)}}}))
    args = [
        "tune",
        "embedding",
        "--config",
        str(config),
        "--output",
        str(output),
        "--plot",
        str(tmp_path / "c.png"),
    ]
    args += ["--seconds", "0.5", "--text-tokens", "8", "48", "--batch-sizes", "1", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    written = TuningResult.load(output)
    assert (
        f"chosen: max_batch_size={written.budget.max_batch_size} "
        f"max_batch_tokens={written.budget.max_batch_tokens}" in printed
    )
    assert "tokens |" in printed and "    48 |" in printed
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"set embedding.tuned_budget_file: {output}" in printed


async def info(address: str) -> embedding_pb2.InfoResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await embedding_pb2_grpc.EmbeddingServiceStub(channel).Info(
            embedding_pb2.InfoRequest(), timeout=10
        )


async def test_service_loads_the_tuned_file(tuned: TuningResult, tmp_path: Path) -> None:
    from textserve.embedding.app import EmbeddingApp

    path = tmp_path / "tuned.json"
    tuned.save(path)
    host = await start_host([EmbeddingApp(embedding_config(tuned_budget_file=path))])
    try:
        address = f"127.0.0.1:{host.port_of('embedding')}"
        reply = await info(address)
        assert reply.batch_budget.source == f"tuned:{path}"
        assert reply.batch_budget.max_batch_size == tuned.budget.max_batch_size
        assert reply.batch_budget.max_batch_tokens == tuned.budget.max_batch_tokens
        assert [(p.text_tokens, p.batch_size) for p in reply.tuning_curve] == [
            (p.text_tokens, p.batch_size) for p in tuned.curve
        ]
        assert reply.tuning_curve[0].texts_per_second == pytest.approx(tuned.curve[0].texts_per_second)
        labels = {"service": "embedding", "model": "all-MiniLM-L6-v2", "version": "1"}
        assert (
            REGISTRY.get_sample_value("textserve_batch_budget_tokens", labels)
            == tuned.budget.max_batch_tokens
        )
        point = tuned.curve[-1]
        sample = REGISTRY.get_sample_value(
            "textserve_tuning_texts_per_second",
            {**labels, "text_tokens": str(point.text_tokens), "batch_size": str(point.batch_size)},
        )
        assert sample == pytest.approx(point.texts_per_second)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            texts = ["short", "a somewhat longer sentence about batching " * 6, "x " * 200]
            calls = [stub.Embed(embedding_pb2.EmbedRequest(texts=[t], skip_cache=True)) for t in texts * 8]
            replies = await asyncio.gather(*calls)
        assert all(len(r.embeddings[0].values) == 384 for r in replies)
    finally:
        await host.stop(grace=1.0)


async def test_autotune_measures_before_serving_and_writes_the_file(tmp_path: Path) -> None:
    from textserve.embedding.app import EmbeddingApp

    path = tmp_path / "auto" / "tuned.json"
    app = EmbeddingApp(embedding_config(tuned_budget_file=path, autotune=True, tuning=TINY))
    host = ServiceHost([app])
    await host.start(wait_ready=False)
    try:
        address = f"127.0.0.1:{host.port_of('embedding')}"
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            early = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert early.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.wait_for(host.running[0].ready.wait(), 120)
            late = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert late.status == health_pb2.HealthCheckResponse.SERVING
        written = TuningResult.load(path)
        reply = await info(address)
        assert reply.batch_budget.source == f"tuned:{path}"
        assert reply.batch_budget.max_batch_tokens == written.budget.max_batch_tokens
        assert len(reply.tuning_curve) == len(written.curve)
    finally:
        await host.stop(grace=1.0)


def test_tune_command_measures_the_classifier_model(
    tmp_path: Path, onnx_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from textserve.cli import main

    config = tmp_path / "config.yaml"
    output = tmp_path / "tuned-classifier.json"
    classifier = {"kind": "zero_shot", "model": {"onnx_cache_dir": str(onnx_cache_dir)}}
    config.write_text(yaml.safe_dump({"classifier": classifier}))
    args = ["tune", "classifier", "--config", str(config), "--output", str(output)]
    args += ["--seconds", "0.5", "--text-tokens", "8", "--batch-sizes", "1", "2"]
    assert main(args) == 0
    written = TuningResult.load(output)
    assert written.provenance.model == "all-MiniLM-L6-v2" and written.budget.max_batch_size in (1, 2)
    assert f"set classifier.tuned_budget_file: {output}" in capsys.readouterr().out


async def test_classifier_in_process_model_loads_the_tuned_file(tuned: TuningResult, tmp_path: Path) -> None:
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.config import ClassifierServiceConfig
    from textserve.classifier.vector_source import LocalVectorSource
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc

    path = tmp_path / "tuned.json"
    tuned.save(path)
    config = ClassifierServiceConfig(
        server=loopback_server(), model=model_config(), cache_enabled=False, tuned_budget_file=path
    )
    app = ClassifierApp(config)
    host = await start_host([app])
    try:
        source = app.service.source
        assert isinstance(source, LocalVectorSource) and source.owned
        batcher = source.encoder.batcher
        assert batcher is not None and batcher.budget.source == f"tuned:{path}"
        assert (batcher.budget.max_batch_size, batcher.budget.max_batch_tokens) == (
            tuned.budget.max_batch_size,
            tuned.budget.max_batch_tokens,
        )
        labels = {"service": "classifier", "model": "all-MiniLM-L6-v2", "version": "1"}
        assert (
            REGISTRY.get_sample_value("textserve_batch_budget_tokens", labels)
            == tuned.budget.max_batch_tokens
        )
        assert REGISTRY.get_sample_value("textserve_batch_budget_size", labels) == tuned.budget.max_batch_size
        address = f"127.0.0.1:{host.port_of('classifier')}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            reply = await stub.Classify(classifier_pb2.ClassifyRequest(texts=["I love it"]), timeout=30)
        assert reply.classifications[0].top_label == "positive"
    finally:
        await host.stop(grace=1.0)
