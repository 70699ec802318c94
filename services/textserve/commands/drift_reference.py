"""`textserve drift-reference`: the reference sample of drift detection, made from a file of texts.

Reads one text per line (`quality.reference.read_texts`), embeds the texts with the
embedding model (in this process with the runtime Encoder of the `embedding` settings, or
through a running embedding service with --embedding-address), optionally classifies them
with a running classifier service (--classifier-address: top label and top score of each
text), and writes the `quality.reference.Reference` as one .npz file
(`quality.reference.save_reference`) that the services read at start
(`quality.drift.reference_file`). The file is written beside its final name and renamed
into place, so a service never reads half a reference. Vectors are unit length, as the
embedding service returns them; the reference never holds the texts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from tqdm import tqdm

from textserve.commands.client_options import add_client_options, client_config, client_token
from textserve.v1 import classifier_pb2, classifier_pb2_grpc

if TYPE_CHECKING:
    from textserve.classifier.vector_source import VectorSource
    from textserve.quality.reference import Reference

SERVICE = "drift-reference"
"""The `service` label of this command's own metrics (upstream calls)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `drift-reference`."""
    parser = subparsers.add_parser(
        "drift-reference",
        help="make the reference sample of drift detection (.npz) from a file of texts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--texts", required=True, type=Path, help="UTF-8 file, one text per line")
    parser.add_argument("--out", required=True, type=Path, help="reference file to write (.npz)")
    parser.add_argument("--config", help="YAML config file (the embedding model for in-process runs)")
    parser.add_argument(
        "--model", default="", help="embedding model directory (default: embedding.model.path)"
    )
    parser.add_argument(
        "--embedding-address", default="", help="embed through this embedding service (default: in-process)"
    )
    parser.add_argument(
        "--classifier-address", default="", help="also classify the texts with this classifier service"
    )
    parser.add_argument("--label-set", default="", help="classifier label set (default: the service's)")
    parser.add_argument(
        "--no-embeddings",
        action="store_true",
        help="classifier outputs only (needs --classifier-address)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per embedding / classify call")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each remote call in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_drift_reference)


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


async def _drift_reference(args: argparse.Namespace) -> int:
    from textserve.quality.reference import read_texts

    if args.batch_size < 1:
        return _error(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.no_embeddings and not args.classifier_address:
        return _error("--no-embeddings needs --classifier-address (nothing would be kept)")
    if not args.texts.is_file():
        return _error(f"--texts {args.texts}: no such file")
    texts = read_texts(args.texts)
    if len(texts) < 2:
        return _error(f"--texts {args.texts} holds {len(texts)} texts; a reference needs at least 2")
    source = None if args.no_embeddings else _vector_source(args)
    if isinstance(source, int):
        return source
    started = time.perf_counter()
    try:
        reference, where = await _build(args, texts, source)
    except Exception as exc:  # a failed model load or call is reported, not raised
        return _error(f"could not build the reference: {_describe(exc)}", 1)
    _write(args.out, reference)
    print(_summary(args.out, reference, where, time.perf_counter() - started))
    return 0


def _vector_source(args: argparse.Namespace) -> VectorSource | int:
    """The embedding model: a running embedding service, or an Encoder in this process."""
    from textserve.classifier.vector_source import LocalVectorSource, RemoteVectorSource

    if args.embedding_address:
        token = client_token(args)
        return RemoteVectorSource(
            args.embedding_address,
            client_config(args).model_copy(update={"timeout_s": args.timeout}),
            token=token.get_secret_value() if token is not None else None,
            service=SERVICE,
        )
    from textserve.commands.settings_option import settings_or_report
    from textserve.runtime.encoder_engine import Encoder, EncoderOptions

    settings = settings_or_report(args.config)
    if settings is None:
        return 2
    config = settings.embedding
    model = config.model.model_copy(update={"path": args.model}) if args.model else config.model
    # One offline pass over a file: no start-up batch-budget measurement, no response cache.
    options = EncoderOptions(model=model, batcher=config.batcher, tuning=config.tuning, autotune=False)
    return LocalVectorSource(Encoder(options, None, None, service=SERVICE), config.limits)


async def _build(
    args: argparse.Namespace, texts: list[str], source: VectorSource | None
) -> tuple[Reference, str]:
    """Runs `quality.reference.build_reference` in a worker thread; its embed / classify
    callables hand each batch to this event loop (the model and channels live here)."""
    from textserve.commands.client_options import open_client_channel
    from textserve.quality.reference import build_reference

    loop = asyncio.get_running_loop()
    where: list[str] = []
    channel = open_client_channel(args, args.classifier_address) if args.classifier_address else None
    if source is not None:
        await source.start()
    try:
        if source is not None:
            description = await source.describe(None)
            where.append(f"embeddings of {description.name or '?'} ({source.location})")
        if channel is not None:
            where.append(f"classifier at {args.classifier_address}")
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel) if channel is not None else None
        progress = tqdm(total=len(texts), unit="text", desc="drift-reference", file=sys.stderr)

        async def embed_batch(batch: list[str]) -> np.ndarray:
            assert source is not None
            vectors = await source.embed(batch, time.monotonic() + args.timeout, True, True)
            return vectors.values

        async def classify_batch(batch: list[str]) -> tuple[list[str], list[float]]:
            assert stub is not None
            request = classifier_pb2.ClassifyRequest(texts=batch, label_set=args.label_set)
            response = await stub.Classify(request, timeout=args.timeout)
            return _top_outputs(response.classifications)

        def embed(batch: list[str]) -> np.ndarray:
            rows = asyncio.run_coroutine_threadsafe(embed_batch(batch), loop).result()
            if stub is None:
                progress.update(len(batch))
            return rows

        def classify(batch: list[str]) -> tuple[list[str], list[float]]:
            outputs = asyncio.run_coroutine_threadsafe(classify_batch(batch), loop).result()
            progress.update(len(batch))
            return outputs

        try:
            reference = await asyncio.to_thread(
                build_reference,
                texts,
                embed=embed if source is not None else None,
                classify=classify if stub is not None else None,
                batch_size=args.batch_size,
            )
        finally:
            progress.close()
    finally:
        if channel is not None:
            await channel.close(None)
        if source is not None:
            await source.stop()
    return reference, ", ".join(where)


def _top_outputs(classifications: Sequence[classifier_pb2.Classification]) -> tuple[list[str], list[float]]:
    """(top label, its score) of each classification."""
    labels: list[str] = []
    scores: list[float] = []
    for item in classifications:
        by_label = {score.label: score.score for score in item.scores}
        labels.append(item.top_label)
        scores.append(float(by_label.get(item.top_label, max(by_label.values(), default=0.0))))
    return labels, scores


def _write(out: Path, reference: Reference) -> None:
    """Saves to a temporary file beside `out`, then renames it into place."""
    from textserve.quality.reference import save_reference

    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_reference(temporary, reference)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def _summary(out: Path, reference: Reference, where: str, seconds: float) -> str:
    parts = []
    if reference.vectors is not None:
        rows, dimensions = reference.vectors.shape
        parts.append(f"{rows} vectors x {dimensions}")
    if reference.labels is not None and reference.confidences is not None:
        counts = Counter(reference.labels)
        mix = ", ".join(
            f"{label} {count / len(reference.labels):.0%}" for label, count in counts.most_common()
        )
        parts.append(
            f"{len(reference.labels)} predictions ({mix}; mean confidence {reference.confidences.mean():.3f})"
        )
    return f"wrote {out}: {'; '.join(parts)} from {where} in {seconds:.1f} s"


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__
