"""INT8 all-MiniLM-L6-v2: size, fidelity on real sentences, a linear head's accuracy, the gate,
and a real embedding service serving it.

The artifact is built once per module by `textserve quantize`'s own code (commands/quantize.py)
into the tests' ONNX cache. Sentences: SST-2 dev (872) and CoNLL-2003 dev (128) from
../shared/data; the linear head is trained on 1,500 SST-2 training sentences (a subset, for
time) and scored on the whole SST-2 dev split.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from textserve.commands.quantize import build_artifact
from textserve.core import metrics
from textserve.core.config import ConfigError
from textserve.runtime import precision as prec
from textserve.runtime.encoder import EncoderModel, onnx_cache_path
from textserve.transport.server import ServiceHost
from textserve.tuning.config import TuningConfig
from textserve.tuning.result import TuningResult
from textserve.tuning.startup import startup_budget
from textserve.v1 import classifier_pb2, classifier_pb2_grpc, embedding_pb2, embedding_pb2_grpc

from tests.procs import ServeProcess
from tests.shared_data import conll_sentences, sst2
from tests.support import (
    ONNX_CACHE,
    embedding_config,
    free_port,
    loopback_server,
    model_config,
    start_host,
)

TRAIN_SUBSET = 1500


@dataclass
class Corpus:
    sentences: list[str]
    """1,000 real sentences: SST-2 dev then CoNLL-2003 dev."""
    dev_labels: list[int]
    """SST-2 dev labels (the first len(dev_labels) sentences)."""
    train: list[str]
    train_labels: list[int]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    dev_rows, train_rows = sst2("dev"), sst2("train")
    dev, dev_labels = [text for _, text in dev_rows], [label for label, _ in dev_rows]
    train, train_labels = [text for _, text in train_rows], [label for label, _ in train_rows]
    conll = conll_sentences("eng.testa")
    sentences = dev + conll[: 1000 - len(dev)]
    assert len(sentences) == 1000
    return Corpus(sentences, dev_labels, train[:TRAIN_SUBSET], train_labels[:TRAIN_SUBSET])


@pytest.fixture(scope="module")
def artifact(corpus: Corpus) -> tuple[Path, prec.Manifest]:
    """The INT8 artifact, built once per module where the service looks for it."""
    ONNX_CACHE.mkdir(parents=True, exist_ok=True)
    return build_artifact(model_config(), "embedding", eval_texts=corpus.sentences[::5], seconds=1.5)


@pytest.fixture(scope="module")
def fp32_model() -> EncoderModel:
    return EncoderModel(model_config())


@pytest.fixture(scope="module")
def int8_model(artifact: tuple[Path, prec.Manifest]) -> EncoderModel:
    return EncoderModel(model_config(precision="int8"))


def vectors(model: EncoderModel, texts: Sequence[str]) -> np.ndarray:
    """Pooled vectors in the texts' order (batches of similar length)."""
    ids = [e.ids for e in model.tokenizer.encode_many(list(texts))]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rows: list[np.ndarray] = [np.empty(0)] * len(ids)
    for start in range(0, len(order), 64):
        chunk = order[start : start + 64]
        for index, row in zip(chunk, model.run_batch([ids[i] for i in chunk]), strict=True):
            rows[index] = row
    return np.stack(rows)


@pytest.fixture(scope="module")
def sentence_vectors(
    corpus: Corpus, fp32_model: EncoderModel, int8_model: EncoderModel
) -> dict[str, np.ndarray]:
    return {"fp32": vectors(fp32_model, corpus.sentences), "int8": vectors(int8_model, corpus.sentences)}


def test_int8_graph_is_at_most_30_percent_of_fp32(
    artifact: tuple[Path, prec.Manifest], fp32_model: EncoderModel
) -> None:
    folder, manifest = artifact
    fp32_graph = onnx_cache_path(fp32_model.files, "embedding", fp32_model.pooling, ONNX_CACHE)
    ratio = (folder / prec.GRAPH).stat().st_size / fp32_graph.stat().st_size
    assert ratio <= 0.30, ratio
    assert manifest.size_ratio == pytest.approx(ratio)
    on_disk = json.loads((folder / prec.MANIFEST).read_text())
    assert on_disk["precision"] == "int8" and on_disk["method"] == "dynamic"
    assert {p["batch_size"] for p in on_disk["throughput"]} >= {1, 32}
    assert on_disk["fidelity"]["texts"] == 200


def test_cosine_against_fp32_over_1000_real_sentences(sentence_vectors: dict[str, np.ndarray]) -> None:
    cos = prec.cosines(sentence_vectors["fp32"], sentence_vectors["int8"])
    assert len(cos) == 1000
    assert cos.mean() >= 0.99, cos.mean()
    assert cos.min() >= 0.97, cos.min()


def test_linear_head_trained_on_fp32_loses_at_most_one_point_on_int8(
    corpus: Corpus, fp32_model: EncoderModel, sentence_vectors: dict[str, np.ndarray]
) -> None:
    from textserve.classifier.training import fit
    from textserve.core.vectors import unit_rows

    train = unit_rows(vectors(fp32_model, corpus.train))
    weight, bias = fit(train, np.asarray(corpus.train_labels), 2)
    truth = np.asarray(corpus.dev_labels)
    dev = len(truth)
    accuracy = {}
    for name in ("fp32", "int8"):
        logits = unit_rows(sentence_vectors[name][:dev]) @ weight.T + bias
        accuracy[name] = float((logits.argmax(axis=1) == truth).mean())
    assert accuracy["fp32"] > 0.7, accuracy  # the head learned something
    assert accuracy["fp32"] - accuracy["int8"] <= 0.01, accuracy


def test_auto_picks_int8_only_when_measured_faster(artifact: tuple[Path, prec.Manifest]) -> None:
    _, manifest = artifact
    auto = EncoderModel(model_config(precision="auto"))
    expected = "int8" if manifest.speedup > 1.0 else "fp32"
    assert auto.info.precision == expected, auto.plan.reason
    assert auto.plan.reason.startswith("auto: ")


def test_impossible_precisions_fail_naming_the_fields() -> None:
    with pytest.raises(ConfigError, match=r"model\.precision='int8'.*model\.backend='torch'"):
        EncoderModel(model_config(precision="int8", backend="torch"))
    with pytest.raises(ConfigError, match=r"model\.precision='bf16'.*model\.backend"):
        EncoderModel(model_config(precision="bf16", backend="onnxruntime"))


def _tampered(source: Path, target: Path, **fidelity: float) -> Path:
    shutil.copytree(source, target)
    data = json.loads((target / prec.MANIFEST).read_text())
    data["fidelity"].update(fidelity)
    (target / prec.MANIFEST).write_text(json.dumps(data))
    return target


async def test_the_service_refuses_a_below_floor_artifact_and_a_missing_manifest(
    artifact: tuple[Path, prec.Manifest], tmp_path: Path
) -> None:
    folder, _ = artifact
    low = _tampered(folder, tmp_path / "low", mean_cosine=0.95)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / prec.GRAPH, bare / prec.GRAPH)
    cases = {"low": low, "bare": bare}
    processes = {}
    for name, path in cases.items():
        settings = {
            "metrics": {"enabled": False},
            "cache": {"backend": "none"},
            "embedding": {
                "server": {"host": "127.0.0.1", "port": free_port()},
                "model": {
                    "onnx_cache_dir": str(ONNX_CACHE),
                    "precision": "int8",
                    "precision_artifact": str(path),
                },
            },
        }
        process = ServeProcess(tmp_path, ["embedding"], settings, name=name)
        process.start()
        processes[name] = process
    codes = {name: await asyncio.to_thread(p.wait, 120) for name, p in processes.items()}
    assert codes["low"] != 0 and codes["bare"] != 0, codes
    low_log = processes["low"].logs()
    assert "mean cosine against fp32 0.9500" in low_log, low_log[-3000:]
    assert "model.min_cosine=0.99" in low_log
    bare_log = processes["bare"].logs()
    assert f"no manifest at {bare / prec.MANIFEST}" in bare_log, bare_log[-3000:]


def test_accuracy_floor_names_the_figure_and_the_floor(
    artifact: tuple[Path, prec.Manifest], tmp_path: Path
) -> None:
    folder, manifest = artifact
    drop = _tampered(folder, tmp_path / "drop", accuracy_fp32=0.90, accuracy=0.87, labelled=872)
    config = model_config(precision="int8", precision_artifact=drop)
    with pytest.raises(
        prec.PrecisionGateError, match=r"accuracy drop 0\.0300 .* model\.max_accuracy_drop=0\.01"
    ):
        prec.check_manifest(
            drop, "int8", config, model=manifest.model, revision=manifest.revision, task="embedding"
        )


@pytest.fixture(scope="module")
async def int8_host(artifact: tuple[Path, prec.Manifest]) -> AsyncIterator[ServiceHost]:
    from textserve.embedding.app import EmbeddingApp

    host = await start_host([EmbeddingApp(embedding_config(model=model_config(precision="int8")))])
    yield host
    await host.stop(grace=1.0)


async def test_an_int8_embedding_service_serves_vectors_close_to_fp32(
    int8_host: ServiceHost, corpus: Corpus, sentence_vectors: dict[str, np.ndarray]
) -> None:
    texts = corpus.sentences[:64]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{int8_host.port_of('embedding')}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=texts), timeout=60)
        info = await stub.Info(embedding_pb2.InfoRequest(), timeout=10)
    served = np.asarray([e.values for e in response.embeddings])
    cos = prec.cosines(sentence_vectors["fp32"][:64], served)
    assert cos.min() >= 0.97 and cos.mean() >= 0.99, (cos.min(), cos.mean())
    # Dynamic INT8 quantises activations per batch (padding included), so a text's vector moves
    # with its batch neighbours: about as far as from fp32.
    assert prec.cosines(sentence_vectors["int8"][:64], served).min() >= 0.97
    assert response.model.precision == "int8"
    assert info.model.precision == "int8"
    exposition = generate_latest(metrics.REGISTRY).decode()
    assert (
        'textserve_model_precision_info{model="all-MiniLM-L6-v2",precision="int8",service="embedding",'
        'version="1"} 1.0' in exposition
    )


def test_tune_measures_int8_and_an_fp32_budget_is_not_applied_to_it(
    artifact: tuple[Path, prec.Manifest],
    int8_model: EncoderModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from textserve.cli import main

    config = tmp_path / "config.yaml"
    output = tmp_path / "tuned.json"
    config.write_text(
        yaml.safe_dump({"embedding": {"model": {"onnx_cache_dir": str(ONNX_CACHE), "precision": "int8"}}})
    )
    flags = ["--seconds", "0.5", "--text-tokens", "8", "--batch-sizes", "1", "2", "--json"]
    assert main(["tune", "embedding", "--config", str(config), "--output", str(output), *flags]) == 0
    tuned = TuningResult.load(output)
    # `textserve tune` measures the model as the service would load it: INT8 here.
    assert tuned.provenance.precision == "int8" and tuned.provenance.backend == "onnxruntime"
    assert json.loads(output.read_text())["precision"] == "int8"
    tiny = TuningConfig(text_tokens=[8], batch_sizes=[1, 2], seconds=0.5, min_repeats=2)
    assert startup_budget(int8_model, output, autotune=False, tuning=tiny) == tuned
    # Measured in fp32 (a newer file saying so, or one from before the key): not applied, and
    # the warning names both precisions; the configured batcher sizes stay.
    replace(tuned, provenance=replace(tuned.provenance, precision="fp32")).save(output)
    older = {k: v for k, v in json.loads(output.read_text()).items() if k != "precision"}
    (tmp_path / "older.json").write_text(json.dumps(older))
    for path in (output, tmp_path / "older.json"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="textserve.tuning.startup"):
            assert startup_budget(int8_model, path, autotune=False, tuning=tiny) is None
        assert "precision 'fp32' != 'int8'" in caplog.text, caplog.text


async def test_an_int8_classifier_reports_its_precision(int8_host: ServiceHost) -> None:
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.config import ClassifierServiceConfig
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig

    in_process = ClassifierServiceConfig(server=loopback_server(), model=model_config(precision="int8"))
    remote = ClassifierServiceConfig(  # vectors from the INT8 embedding service
        server=loopback_server(), embedding_address=f"127.0.0.1:{int8_host.port_of('embedding')}"
    )
    for config in (in_process, remote):
        host = await start_host([ClassifierApp(config, build_cache(CacheConfig(), "classifier"))])
        try:
            address = f"127.0.0.1:{host.port_of('classifier')}"
            async with grpc.aio.insecure_channel(address) as channel:
                stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
                response = await stub.Classify(
                    classifier_pb2.ClassifyRequest(texts=["a fine film"]), timeout=60
                )
                info = await stub.ClassifierInfo(classifier_pb2.ClassifierInfoRequest(), timeout=10)
        finally:
            await host.stop(grace=1.0)
        assert response.model.precision == info.model.precision == "int8", config.embedding_address
