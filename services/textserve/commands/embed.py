"""`textserve embed "text" ...`: calls a running embedding service and prints a summary."""

from __future__ import annotations

import argparse
import json

import numpy as np

from textserve.commands.client_options import add_client_options, call_client


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
    response = await call_client(
        args,
        "embedding",
        lambda client: client.embed_batch(
            args.texts, normalize=args.normalize, truncate=not args.reject_long
        ),
    )
    if response is None:
        return 1
    if args.json:
        print(json.dumps([[float(v) for v in row] for row in response.vectors]))
        return 0
    model = response.model
    print(f"model {model.name} ({model.backend} on {model.device}), {response.usage.input_tokens} tokens")
    for text, vector, tokens, truncated in zip(
        args.texts, response.vectors, response.input_tokens, response.truncated, strict=True
    ):
        head = ", ".join(f"{v:+.4f}" for v in vector[:5])
        shown = text if len(text) <= 40 else text[:37] + "..."
        print(
            f"{shown!r}: dim={vector.size} norm={np.linalg.norm(vector):.4f} tokens={tokens}"
            f"{' (truncated)' if truncated else ''} [{head}, ...]"
        )
    timing = response.timing
    print(
        f"timing: total {timing.total_ns / 1e6:.2f} ms, queue {timing.queue_ns / 1e6:.2f} ms, "
        f"inference {timing.inference_ns / 1e6:.2f} ms"
    )
    return 0
