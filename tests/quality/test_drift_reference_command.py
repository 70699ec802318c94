"""`textserve drift-reference` on 200 SST-2 train sentences (../shared/data).

In process (the runtime Encoder of the `embedding` settings), and through running services:
the session's embedding service and a zero-shot classifier that gets its vectors from it.
The written .npz must load with `quality.reference.load_reference` and hold one unit
vector per text (and the classifier's top label and score of each text when asked).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from textserve.cli import build_parser
from textserve.quality.reference import load_reference
from textserve.v1 import classifier_pb2, classifier_pb2_grpc

from tests.shared_data import sst2
from tests.support import ONNX_CACHE, loopback_server, model_config, start_host

TEXTS = 200


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 200 SST-2 train sentences, one per line."""
    path = tmp_path_factory.mktemp("drift-reference") / "sst2-train-200.txt"
    path.write_text("\n".join(text for _, text in sst2("train")[:TEXTS]) + "\n", encoding="utf-8")
    return path


async def run(*argv: str) -> int:
    """Runs the command's handler on this test's event loop."""
    args: argparse.Namespace = build_parser().parse_args(["drift-reference", *argv])
    return int(await args.handler(args))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Settings whose embedding model uses the tests' ONNX cache."""
    path = tmp_path_factory.mktemp("drift-reference-config") / "textserve.yaml"
    path.write_text(yaml.safe_dump({"embedding": {"model": {"onnx_cache_dir": str(ONNX_CACHE)}}}))
    return path


async def test_in_process_reference(tmp_path: Path, texts_file: Path, config_file: Path) -> None:
    out = tmp_path / "refs" / "sst2.npz"
    assert await run("--texts", str(texts_file), "--out", str(out), "--config", str(config_file)) == 0
    assert [p.name for p in out.parent.iterdir()] == ["sst2.npz"]  # no temporary file left behind
    reference = load_reference(out)
    assert reference.vectors is not None
    assert reference.vectors.shape == (TEXTS, 384)
    assert reference.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reference.vectors, axis=1), 1.0, atol=1e-5)
    assert len({row.tobytes() for row in reference.vectors}) == TEXTS
    assert reference.labels is None and reference.confidences is None


async def test_reference_through_services(
    tmp_path: Path, texts_file: Path, config_file: Path, embedding_address: str
) -> None:
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.config import ClassifierServiceConfig
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig

    config = ClassifierServiceConfig(
        server=loopback_server(), model=model_config(), embedding_address=embedding_address
    )
    classifier = await start_host([ClassifierApp(config, build_cache(CacheConfig(), "classifier"))])
    try:
        classifier_address = f"127.0.0.1:{classifier.port_of('classifier')}"
        out = tmp_path / "remote.npz"
        argv = ["--texts", str(texts_file), "--out", str(out), "--embedding-address", embedding_address]
        assert await run(*argv, "--classifier-address", classifier_address, "--batch-size", "50") == 0
        reference = load_reference(out)

        local = tmp_path / "local.npz"
        assert await run("--texts", str(texts_file), "--out", str(local), "--config", str(config_file)) == 0
        local_vectors = load_reference(local).vectors
        assert reference.vectors is not None and local_vectors is not None
        np.testing.assert_allclose(reference.vectors, local_vectors, atol=1e-4)

        assert reference.labels is not None and reference.confidences is not None
        assert len(reference.labels) == len(reference.confidences) == TEXTS
        texts = [text for _, text in sst2("train")[:5]]
        async with grpc.aio.insecure_channel(classifier_address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            answer = await stub.Classify(classifier_pb2.ClassifyRequest(texts=texts), timeout=30)
        for index, item in enumerate(answer.classifications):
            assert reference.labels[index] == item.top_label
            top = max(score.score for score in item.scores)
            assert reference.confidences[index] == pytest.approx(top, rel=1e-6)
        assert set(reference.labels) <= {score.label for score in answer.classifications[0].scores}

        only_outputs = tmp_path / "outputs.npz"
        argv = ["--texts", str(texts_file), "--out", str(only_outputs), "--no-embeddings"]
        assert await run(*argv, "--classifier-address", classifier_address) == 0
        outputs = load_reference(only_outputs)
        assert outputs.vectors is None and outputs.labels == reference.labels
    finally:
        await classifier.stop(grace=1.0)


async def test_usage_errors(tmp_path: Path, texts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.npz"
    assert await run("--texts", str(tmp_path / "missing.txt"), "--out", str(out)) == 2
    assert "no such file" in capsys.readouterr().err
    assert await run("--texts", str(texts_file), "--out", str(out), "--no-embeddings") == 2
    assert "--no-embeddings needs --classifier-address" in capsys.readouterr().err
    one = tmp_path / "one.txt"
    one.write_text("only one text\n\n", encoding="utf-8")
    assert await run("--texts", str(one), "--out", str(out)) == 2
    assert "at least 2" in capsys.readouterr().err
    unreachable = ["--embedding-address", "127.0.0.1:1", "--timeout", "2"]
    assert await run("--texts", str(texts_file), "--out", str(out), *unreachable) == 1
    assert "could not build the reference" in capsys.readouterr().err
    assert not out.exists()
