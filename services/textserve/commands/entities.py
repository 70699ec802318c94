"""`textserve entities "text"`: named entities from a running token_classification classifier
(through textserve.client): label, score, code-point span and text of each entity."""

from __future__ import annotations

import argparse
import json

from textserve.commands.client_options import add_client_options, call_client

_STRATEGIES = ("none", "simple", "first", "average", "max")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `entities`."""
    parser = subparsers.add_parser(
        "entities", help="extract named entities with a running token-classification classifier"
    )
    parser.add_argument("texts", nargs="+", help="texts to tag")
    parser.add_argument("--address", default="127.0.0.1:50053", help="classifier service host:port")
    parser.add_argument(
        "--aggregation",
        default="",
        choices=("", *_STRATEGIES),
        help="aggregation strategy (default: the service's)",
    )
    parser.add_argument("--stride", type=int, default=0, help="window overlap in tokens (0: the service's)")
    parser.add_argument("--tokens", action="store_true", help="also print every token's label")
    parser.add_argument("--json", action="store_true", help="print the entities as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_entities)


async def _entities(args: argparse.Namespace) -> int:
    response = await call_client(
        args,
        "classifier",
        lambda client: client.extract_entities(
            args.texts,
            aggregation_strategy=args.aggregation,
            stride=max(0, args.stride),
            include_tokens=args.tokens,
            timeout=args.timeout,
        ),
    )
    if response is None:
        return 1
    if args.json:
        print(
            json.dumps(
                [
                    [
                        {
                            "label": e.label,
                            "score": round(e.score, 6),
                            "start": e.start,
                            "end": e.end,
                            "text": e.text,
                        }
                        for e in item.entities
                    ]
                    for item in response.items
                ],
                ensure_ascii=False,
            )
        )
        return 0
    for text, item in zip(args.texts, response.items, strict=True):
        shown = text if len(text) <= 50 else text[:47] + "..."
        print(f"{shown!r}: {len(item.entities)} entities ({item.windows} window(s))")
        for e in item.entities:
            print(f"  {e.label:<8} {e.score:.3f}  [{e.start}:{e.end}]  {e.text!r}")
        for t in item.tokens:
            print(f"    token {t.text!r} [{t.start}:{t.end}] {t.label} {t.score:.3f}")
    print(f"model {response.model.name}, {response.timing.total_ns / 1e6:.1f} ms")
    return 0
