"""Command line: `textserve serve <service>|all`, and a client command per service.

Subcommands live in `textserve.commands` (a module per command family: `serve`, `tune`, and
the client commands `embed`, `tokenize`, `classify`, `generate` that call a running service);
each module in COMMAND_MODULES exposes `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "textserve.commands.serve",
    "textserve.commands.tune",
    "textserve.commands.quantize",
    "textserve.commands.fine_tune",
    "textserve.commands.train_demo_lm",
    "textserve.commands.embed",
    "textserve.commands.tokenize",
    "textserve.commands.classify",
    "textserve.commands.entities",
    "textserve.commands.evaluate",
    "textserve.commands.generate",
    "textserve.commands.drift_reference",
    "textserve.commands.ab_report",
    "textserve.commands.models",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="textserve", description="gRPC serving for text models")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `textserve` command."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    result = args.handler(args)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
