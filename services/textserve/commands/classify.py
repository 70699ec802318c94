"""`textserve classify "text"` (calls a running classifier) and `textserve train-classifier`.

train-classifier reads (text, label) rows from CSV or JSONL, embeds the texts (in-process,
or through a running embedding service with --embedding-address), fits a linear head on
a stratified split, prints accuracy, macro-F1 and the confusion matrix on the held-out
part, and saves the head (safetensors) for `classifier.kind: linear_head`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from textserve.commands.client_options import add_client_options, call_client

if TYPE_CHECKING:
    from textserve.classifier.vector_source import VectorSource

_TRAIN_CHUNK = 64
_TRAIN_CONCURRENCY = 4


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `classify` and `train-classifier`."""
    parser = subparsers.add_parser("classify", help="classify texts with a running classifier service")
    parser.add_argument("texts", nargs="+", help="texts to classify")
    parser.add_argument("--address", default="127.0.0.1:50053", help="classifier service host:port")
    parser.add_argument("--label-set", default="", help="configured label set (default: the service's)")
    parser.add_argument("--labels", default="", help="comma-separated labels of your own (zero-shot only)")
    parser.add_argument("--top-k", type=int, default=0, help="show only the k best labels (0: all)")
    parser.add_argument("--temperature", type=float, default=0.0, help="zero-shot temperature (0: default)")
    parser.add_argument("--json", action="store_true", help="print the classifications as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_classify)

    train = subparsers.add_parser(
        "train-classifier", help="train a linear classification head on embeddings (text,label data)"
    )
    train.add_argument("--data", required=True, type=Path, help="training data: .csv (text,label) or .jsonl")
    train.add_argument("--out", type=Path, help="head file to write (default: classifier.head_path)")
    train.add_argument("--config", help="YAML config file (the classifier's model and client settings)")
    train.add_argument(
        "--model", default="", help="embedding model directory (default: classifier.model.path)"
    )
    train.add_argument(
        "--embedding-address", default=None, help="embed through this embedding service (default: in-process)"
    )
    train.add_argument("--test-fraction", type=float, default=0.2, help="share of each label held out")
    train.add_argument("--l2", type=float, default=1e-3, help="L2 regularisation of the weights")
    train.add_argument("--seed", type=int, default=0, help="seed of the split")
    train.set_defaults(handler=_train)


async def _classify(args: argparse.Namespace) -> int:
    labels = [name.strip() for name in args.labels.split(",") if name.strip()]
    response = await call_client(
        args,
        "classifier",
        lambda client: client.classify_batch(
            args.texts,
            labels=labels,
            label_set=args.label_set,
            top_k=max(0, args.top_k),
            temperature=args.temperature,
        ),
    )
    if response is None:
        return 1
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "top_label": c.top_label,
                        "scores": {label: round(score, 6) for label, score in c.scores.items()},
                    }
                    for c in response.items
                ]
            )
        )
        return 0
    for text, item in zip(args.texts, response.items, strict=True):
        shown = text if len(text) <= 50 else text[:47] + "..."
        scores = ", ".join(f"{label} {score:.3f}" for label, score in item.scores.items())
        print(f"{shown!r}: {item.top_label}  [{scores}]")
    print(f"model {response.model.name}, {response.timing.total_ns / 1e6:.1f} ms")
    return 0


async def _train(args: argparse.Namespace) -> int:
    from textserve.classifier.kinds import SERVICE, local_encoder
    from textserve.classifier.linear_head import LinearHead
    from textserve.classifier.training import TrainingDataError, format_report, read_examples, train
    from textserve.classifier.vector_source import LocalVectorSource, RemoteVectorSource
    from textserve.commands.settings_option import settings_or_report

    settings = settings_or_report(args.config)
    if settings is None:
        return 2
    config = settings.classifier
    if args.model:
        config = config.model_copy(update={"model": config.model.model_copy(update={"path": args.model})})
    out: Path | None = args.out or config.head_path
    if out is None:
        print("give --out (or set classifier.head_path)", file=sys.stderr)
        return 2
    if not 0.0 < args.test_fraction < 1.0:
        print(f"--test-fraction must be between 0 and 1 (got {args.test_fraction})", file=sys.stderr)
        return 2
    try:
        examples = read_examples(args.data)
    except TrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = sorted({example.label for example in examples})
    print(f"read {len(examples)} examples with {len(labels)} labels from {args.data}")
    address = config.embedding_address if args.embedding_address is None else args.embedding_address
    source: VectorSource = (
        RemoteVectorSource(address, config.client, service=SERVICE)
        if address
        # Training embeds once, offline: no start-up batch-budget measurement.
        else LocalVectorSource(local_encoder(config, autotune=False), config.limits)
    )
    started = time.perf_counter()
    await source.start()
    try:
        description = await source.describe(None)
        vectors = await _embed_all(source, [example.text for example in examples])
    except Exception as exc:
        print(f"error: could not embed the texts ({source.location}): {exc}", file=sys.stderr)
        return 1
    finally:
        await source.stop()
    print(
        f"embedded {len(examples)} texts with {description.name} ({source.location}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    try:
        trained = train(vectors, examples, test_fraction=args.test_fraction, l2=args.l2, seed=args.seed)
    except TrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(trained.report))
    head = LinearHead(
        trained.weight,
        trained.bias,
        trained.labels,
        description.name,
        description.revision,
        {"accuracy": trained.report.accuracy, "macro_f1": trained.report.macro_f1},
    )
    head.save(out)
    print(f"saved head to {out} ({len(head.labels)} labels, {head.dimensions} dimensions)")
    return 0


async def _embed_all(source: VectorSource, texts: list[str]) -> np.ndarray:
    """Unit vectors of every text, a few chunks at a time (the queue never overflows)."""
    slots = asyncio.Semaphore(_TRAIN_CONCURRENCY)

    async def one(chunk: list[str]) -> np.ndarray:
        async with slots:
            return (await source.embed(chunk, None, True, False)).values

    chunks = [texts[i : i + _TRAIN_CHUNK] for i in range(0, len(texts), _TRAIN_CHUNK)]
    return np.concatenate(await asyncio.gather(*(one(chunk) for chunk in chunks)))
