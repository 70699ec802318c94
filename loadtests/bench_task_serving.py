"""Served task models: a sequence classifier and an NER model behind the classifier service.

For each model, interleaved rounds (raw, served, raw, served, ...) in one process:
  * raw: the model's own forward on this machine (runtime EncoderModel: tokenize + ONNX
    Runtime, one short text per call, no service) at concurrency 1;
  * served: one short text per Classify / ExtractEntities call over loopback gRPC to a
    classifier service (kind sequence_classification / token_classification, no response
    cache, skip_cache so that identical texts are not coalesced) at concurrency 1 and 32.
Reported: medians over rounds of p50 / p95 / p99 and throughput, and the ratios served/raw
from the same run. The bar users set: a single short text (<= 64 tokens) answered with p95
under 50 ms at concurrency 1.

Without --classifier-model / --ner-model, MiniLM-L6 (the served embedding model) with a
seeded, untrained head is used: the same architecture, size and cost as a model fine-tuned
from it (`textserve fine-tune`), so the latency is that of a fine-tuned model.

    python -m loadtests.bench_task_serving [--classifier-model DIR] [--ner-model DIR]
        [--seconds 5] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.common import (
    BenchResult,
    LatencyStats,
    bench_parser,
    closed_loop,
    percentile,
    print_table,
    run_bench,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHORT_TEXTS = [
    "the film is a charming , funny and moving story .",
    "Peter Blackburn met officials of the European Union in Brussels on Monday .",
    "a dull , lifeless script that never finds its footing .",
    "Shares of Acme Corp rose 3 percent in New York trading .",
]
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def stand_in(task: str, folder: Path) -> Path:
    """MiniLM-L6 with a seeded head of the task, saved to `folder` (a latency stand-in for a
    model fine-tuned from it)."""
    import torch
    from textserve.core.config import ModelConfig
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    base = ModelConfig().path
    torch.manual_seed(0)
    if task == "sequence-classification":
        labels: tuple[str, ...] = ("negative", "positive")
        loader: Any = AutoModelForSequenceClassification
    else:
        labels, loader = NER_LABELS, AutoModelForTokenClassification
    model = loader.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)},
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def raw_run(model: Any, seconds: float) -> tuple[LatencyStats, float]:
    """One short text per call through the model's own tokenize + forward, for `seconds`;
    (stats, p95 ms)."""
    latencies: list[float] = []
    began = time.perf_counter()
    index = 0
    while time.perf_counter() - began < seconds:
        started = time.perf_counter()
        ids = model.tokenizer.encode_many([SHORT_TEXTS[index % len(SHORT_TEXTS)]])[0].ids
        model.run_batch([ids])
        latencies.append(time.perf_counter() - started)
        index += 1
    stats = LatencyStats.of(latencies, time.perf_counter() - began)
    return stats, percentile([v * 1000 for v in latencies], 95)


async def served_run(address: str, task: str, concurrency: int, seconds: float) -> tuple[LatencyStats, float]:
    """Closed loop of single-text calls; (stats, p95 ms)."""
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc

    def bind(channel: Any) -> Any:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)

        async def send(i: int) -> Any:
            text = SHORT_TEXTS[i % len(SHORT_TEXTS)]
            if task == "sequence-classification":
                return await stub.Classify(classifier_pb2.ClassifyRequest(texts=[text], skip_cache=True))
            request = classifier_pb2.ExtractEntitiesRequest(texts=[text], skip_cache=True)
            return await stub.ExtractEntities(request)

        return send

    run = await closed_loop(address, bind, concurrency, seconds, warmup_s=min(1.0, seconds / 4))
    return run.stats(), percentile([v * 1000 for v in run.latencies_s], 95)


async def measure_served(model_dir: Path, task: str, seconds: float, rounds: int) -> dict[str, Any]:
    """Interleaved raw / served rounds of one model; medians and ratios."""
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.config import ClassifierServiceConfig
    from textserve.core.config import ModelConfig, ServerConfig
    from textserve.runtime.encoder import EncoderModel
    from textserve.transport.server import ServiceHost

    kind = "sequence_classification" if task == "sequence-classification" else "token_classification"
    config = ClassifierServiceConfig(
        server=ServerConfig(host="127.0.0.1", port=0, grace_period_s=1.0),
        kind=kind,
        model=ModelConfig(path=str(model_dir)),
    )
    raw_model = await asyncio.to_thread(EncoderModel, config.model, task)  # type: ignore[arg-type]
    host = ServiceHost([ClassifierApp(config)])
    await host.start()
    address = f"127.0.0.1:{host.port_of('classifier')}"
    samples: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    try:
        for _ in range(rounds):
            raw, raw_p95 = await asyncio.to_thread(raw_run, raw_model, seconds)
            note("raw_p50_ms", raw.p50_ms)
            note("raw_p95_ms", raw_p95)
            note("raw_p99_ms", raw.p99_ms)
            note("raw_rps", raw.throughput)
            one, one_p95 = await served_run(address, task, 1, seconds)
            note("served_c1_p50_ms", one.p50_ms)
            note("served_c1_p95_ms", one_p95)
            note("served_c1_p99_ms", one.p99_ms)
            note("served_c1_rps", one.throughput)
            many, _ = await served_run(address, task, 32, seconds)
            note("served_c32_p50_ms", many.p50_ms)
            note("served_c32_p99_ms", many.p99_ms)
            note("served_c32_rps", many.throughput)
    finally:
        await host.stop(grace=1.0)
    row: dict[str, Any] = {name: statistics.median(values) for name, values in samples.items()}
    row["c1_p50_ratio_to_raw"] = row["served_c1_p50_ms"] / row["raw_p50_ms"]
    row["c32_rps_ratio_to_raw"] = row["served_c32_rps"] / row["raw_rps"]
    row["model_dir"] = str(model_dir)
    row["backend"] = raw_model.info.backend
    return row


async def run(args: argparse.Namespace) -> BenchResult:
    result = BenchResult("task_serving", "Served sequence classifier and NER model vs raw forward")
    with tempfile.TemporaryDirectory(prefix="textserve-task-serving-") as scratch:
        models = {
            "sequence-classification": args.classifier_model
            or stand_in("sequence-classification", Path(scratch) / "seq"),
            "token-classification": args.ner_model or stand_in("token-classification", Path(scratch) / "ner"),
        }
        for task, folder in models.items():
            print(f"== {task}: {folder}", flush=True)
            row = await measure_served(Path(folder), task, args.seconds, args.rounds)
            given = args.classifier_model if task == "sequence-classification" else args.ner_model
            result.add_row(task=task, stand_in=given is None, **row)
    result.columns = [
        "task", "raw_p50_ms", "raw_p95_ms", "raw_p99_ms", "raw_rps", "served_c1_p50_ms", "served_c1_p95_ms",
        "served_c1_p99_ms", "served_c1_rps", "served_c32_p50_ms", "served_c32_p99_ms", "served_c32_rps",
        "c1_p50_ratio_to_raw", "c32_rps_ratio_to_raw",
    ]  # fmt: skip
    print_table(result.rows, result.columns, title="served task models, one short text per call")
    result.notes += [
        f"Interleaved rounds raw / served c1 / served c32, {args.rounds} rounds of {args.seconds} s;"
        " medians.",
        "raw: runtime EncoderModel (tokenize + ONNX Runtime forward), no service; served: loopback gRPC,"
        " no response cache, skip_cache (identical texts not coalesced).",
        "Bar: served c1 p95 < 50 ms for a short text (<= 64 tokens).",
    ]
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--classifier-model", type=Path, help="a sequence-classification directory")
    parser.add_argument("--ner-model", type=Path, help="a token-classification directory")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", type=Path, help="write the result here (textserve-bench/1)")
    run_bench(parser, run)


if __name__ == "__main__":
    main()
