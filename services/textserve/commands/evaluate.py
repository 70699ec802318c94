"""`textserve evaluate`: a classifier or NER model measured on a labelled file, as served.

Against a running classifier (--address) or a model directory (--model: served here by a
classifier on an ephemeral loopback port, with no response cache), one request per example
at concurrency 1, the response cache skipped: sequence classification gives accuracy,
macro-F1, per-class recall and the confusion matrix (scikit-learn); token classification
gives entity-level precision, recall and F1 per type (seqeval, strict IOB2) from the
entities mapped back onto the file's words; both give the latency per request (p50/p99).
Data files are those `textserve fine-tune` reads (training/data.py, training/conll.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textserve.commands.client_options import add_client_options, open_client_channel

_STRATEGIES = ("simple", "first", "average", "max")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `evaluate`."""
    parser = subparsers.add_parser(
        "evaluate", help="measure a classifier or NER model (running, or a directory) on a labelled file"
    )
    parser.add_argument(
        "--task",
        default="sequence-classification",
        choices=("sequence-classification", "token-classification"),
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="labelled file (the formats fine-tune reads)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="a running classifier service host:port")
    where.add_argument("--model", type=Path, help="a model directory to serve here and evaluate")
    parser.add_argument("--label-map", default="", help="rename labels as read, e.g. '0=negative,1=positive'")
    parser.add_argument(
        "--aggregation", default="first", choices=_STRATEGIES, help="NER aggregation strategy"
    )
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples (0: all)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each request in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_evaluate)


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean latency in milliseconds."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "requests": len(values),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
    }


def word_tags(words: Sequence[str], entities: Sequence[Any]) -> list[str]:
    """IOB2 tags of the words of `" ".join(words)` from entity spans (code points): a word
    overlapping an entity takes its type, B- on the entity's first word."""
    tags: list[str] = []
    position = 0
    previous: Any = None
    for word in words:
        start, end = position, position + len(word)
        position = end + 1
        owner = next((e for e in entities if start < e.end and end > e.start), None)
        if owner is None:
            tags.append("O")
        else:
            tags.append(("I-" if owner is previous else "B-") + owner.label)
        previous = owner
    return tags


@contextlib.asynccontextmanager
async def _served(args: argparse.Namespace) -> AsyncIterator[str]:
    """The address to evaluate: --address, or a classifier serving --model here."""
    if args.address:
        yield args.address
        return
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.config import ClassifierServiceConfig
    from textserve.core.config import ModelConfig, ServerConfig
    from textserve.transport.server import ServiceHost

    kind = "token_classification" if args.task == "token-classification" else "sequence_classification"
    config = ClassifierServiceConfig(
        server=ServerConfig(host="127.0.0.1", port=0, grace_period_s=1.0),
        kind=kind,
        model=ModelConfig(path=str(args.model)),
        cache_enabled=False,
    )
    host = ServiceHost([ClassifierApp(config)])
    await host.start()
    try:
        yield f"127.0.0.1:{host.port_of('classifier')}"
    finally:
        await host.stop(grace=1.0)


async def _evaluate(args: argparse.Namespace) -> int:
    from textserve.commands.fine_tune import parse_label_map
    from textserve.training.data import DataError

    try:
        label_map = parse_label_map(args.label_map)
        examples = _read(args, label_map)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit > 0:
        examples = examples[: args.limit]
    async with _served(args) as address:
        channel = open_client_channel(args, address)
        try:
            if args.task == "sequence-classification":
                report = await _sequence(channel, examples, args.timeout)
            else:
                report = await _tokens(channel, examples, args.timeout, args.aggregation)
        except (ValueError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            await channel.close(None)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(report.pop("text"))
    latency = report["latency"]
    print(
        f"latency per request (concurrency 1, {latency['requests']} requests): "
        f"p50 {latency['p50_ms']:.1f} ms  p99 {latency['p99_ms']:.1f} ms  (model {report['model']})"
    )
    return 0


def _read(args: argparse.Namespace, label_map: dict[str, str]) -> list[Any]:
    if args.task == "sequence-classification":
        from textserve.training.data import read_text_examples

        return list(read_text_examples(args.data, label_map))
    from textserve.training.conll import read_tagged_sentences

    return list(read_tagged_sentences(args.data))


async def _sequence(channel: Any, examples: Sequence[Any], timeout_s: float) -> dict[str, Any]:
    from textserve.training.metrics import classification_metrics, format_classification
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc

    stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
    info = await stub.ClassifierInfo(classifier_pb2.ClassifierInfoRequest(), timeout=timeout_s)
    labels = list(info.labels)
    unknown = sorted({example.label for example in examples} - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} of the data are not the classifier's {labels} (use --label-map)")
    actual, predicted, seconds = [], [], []
    for example in _progress(examples, "evaluate"):
        request = classifier_pb2.ClassifyRequest(texts=[example.text], skip_cache=True)
        started = time.perf_counter()
        reply = await stub.Classify(request, timeout=timeout_s)
        seconds.append(time.perf_counter() - started)
        actual.append(labels.index(example.label))
        predicted.append(labels.index(reply.classifications[0].top_label))
    metrics = classification_metrics(actual, predicted, labels)
    return {
        "model": f"{info.model.name}@{info.model.revision}",
        "metrics": metrics,
        "latency": percentiles(seconds),
        "text": format_classification(metrics, labels),
    }


async def _tokens(
    channel: Any, sentences: Sequence[Any], timeout_s: float, aggregation: str
) -> dict[str, Any]:
    from textserve.training.metrics import entity_metrics, format_entities
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc

    stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
    strategy = classifier_pb2.AggregationStrategy.Value(f"AGGREGATION_STRATEGY_{aggregation.upper()}")
    actual, predicted, seconds = [], [], []
    model = ""
    for sentence in _progress(sentences, "evaluate"):
        request = classifier_pb2.ExtractEntitiesRequest(
            texts=[" ".join(sentence.words)],
            aggregation_strategy=strategy,  # type: ignore[arg-type]
            skip_cache=True,
        )
        started = time.perf_counter()
        reply = await stub.ExtractEntities(request, timeout=timeout_s)
        seconds.append(time.perf_counter() - started)
        model = f"{reply.model.name}@{reply.model.revision}"
        actual.append(list(sentence.tags))
        predicted.append(word_tags(sentence.words, reply.results[0].entities))
    metrics = entity_metrics(actual, predicted)
    return {
        "model": model,
        "metrics": metrics,
        "latency": percentiles(seconds),
        "text": format_entities(metrics),
    }


def _progress(items: Sequence[Any], description: str) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="req", file=sys.stderr, disable=not sys.stderr.isatty())
