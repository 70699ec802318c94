"""`textserve embed "text" ...`: calls a running embedding service and prints a summary."""

from __future__ import annotations

import argparse
import json

import numpy as np

from textserve.commands.client_options import add_client_options, call_service
from textserve.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `embed`."""
    parser = subparsers.add_parser("embed", help="embed texts with a running embedding service")
    parser.add_argument("texts", nargs="+", help="texts to embed")
    parser.add_argument("--address", default="127.0.0.1:50052", help="embedding service host:port")
    parser.add_argument("--normalize", action="store_true", help="unit-length vectors")
    parser.add_argument("--reject-long", action="store_true", help="reject overlong texts instead of cutting")
    parser.add_argument("--json", action="store_true", help="print full vectors as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_embed)


async def _embed(args: argparse.Namespace) -> int:
    request = embedding_pb2.EmbedRequest(
        texts=args.texts,
        normalize=args.normalize,
        truncation=(
            common_pb2.TRUNCATION_POLICY_REJECT if args.reject_long else common_pb2.TRUNCATION_POLICY_TRUNCATE
        ),
    )
    response = await call_service(args, embedding_pb2_grpc.EmbeddingServiceStub, "Embed", request)
    if response is None:
        return 1
    if args.json:
        print(json.dumps([list(e.values) for e in response.embeddings]))
        return 0
    model = response.model
    print(f"model {model.name} ({model.backend} on {model.device}), {response.usage.input_tokens} tokens")
    for text, item in zip(args.texts, response.embeddings, strict=True):
        vector = np.asarray(item.values, dtype=np.float32)
        head = ", ".join(f"{v:+.4f}" for v in vector[:5])
        shown = text if len(text) <= 40 else text[:37] + "..."
        print(
            f"{shown!r}: dim={vector.size} norm={np.linalg.norm(vector):.4f} tokens={item.input_tokens}"
            f"{' (truncated)' if item.truncated else ''} [{head}, ...]"
        )
    timing = response.timing
    print(
        f"timing: total {timing.total_time_ns / 1e6:.2f} ms, queue {timing.queue_time_ns / 1e6:.2f} ms, "
        f"inference {timing.inference_time_ns / 1e6:.2f} ms"
    )
    return 0
