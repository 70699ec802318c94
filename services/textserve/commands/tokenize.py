"""`textserve tokenize "text" ...`: calls a running tokenizer service and prints each token."""

from __future__ import annotations

import argparse
import json

from textserve.commands.client_options import add_client_options, call_client


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `tokenize`."""
    parser = subparsers.add_parser("tokenize", help="tokenize texts with a running tokenizer service")
    parser.add_argument("texts", nargs="+", help="texts to tokenize")
    parser.add_argument("--address", default="127.0.0.1:50051", help="tokenizer service host:port")
    parser.add_argument(
        "--model", default="", help="model whose tokenizer to use (default: the service's first)"
    )
    parser.add_argument("--no-special-tokens", action="store_true", help="leave out [CLS], [SEP], BOS, ...")
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="cut each text at this many tokens (0: no cut)"
    )
    parser.add_argument("--json", action="store_true", help="print the encodings as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_tokenize)


async def _tokenize(args: argparse.Namespace) -> int:
    response = await call_client(
        args,
        "tokenizer",
        lambda client: client.tokenize(
            args.texts,
            model=args.model,
            add_special_tokens=not args.no_special_tokens,
            max_tokens=max(0, args.max_tokens),
        ),
    )
    if response is None:
        return 1
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "ids": e.ids,
                        "tokens": e.tokens,
                        "offsets": [[start, end] for start, end in e.offsets],
                        "truncated": e.truncated,
                    }
                    for e in response.encodings
                ]
            )
        )
        return 0
    print(f"model {response.model.name}, {response.usage.input_tokens} tokens")
    for text, encoding in zip(args.texts, response.encodings, strict=True):
        note = f" (cut from {encoding.untruncated_tokens})" if encoding.truncated else ""
        print(f"{text!r}: {len(encoding.ids)} tokens{note}")
        for token_id, token, (start, end) in zip(
            encoding.ids, encoding.tokens, encoding.offsets, strict=True
        ):
            span = text[start:end] if end > start else ""
            print(f"  {token_id:>7}  {token:<16} [{start:>4}, {end:>4})  {span!r}")
    return 0
