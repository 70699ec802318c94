"""`textserve train-demo-lm`: trains the packaged demo causal LM from public-domain books.

Learns a byte-level BPE tokenizer and a small GPT-2-shaped model from the .txt files of
--corpus (default `../shared/data/corpus`), seeded and reproducible on CPU, prints the
held-out perplexity, and writes the model directory (default: the packaged one that
`make run` serves) all at once at the end (nothing on error or interrupt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `train-demo-lm`."""
    from textserve.runtime.demo_lm import DEMO_LM_DIR
    from textserve.training.demo_lm import DemoLMRecipe

    defaults = DemoLMRecipe()
    parser = subparsers.add_parser(
        "train-demo-lm",
        help="train the small demo causal LM and its tokenizer on public-domain books (CPU, minutes)",
    )
    parser.add_argument(
        "--corpus", type=Path, default=Path("../shared/data/corpus"), help="a .txt file or a folder of them"
    )
    parser.add_argument("--out", type=Path, default=DEMO_LM_DIR, help="model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per step")
    parser.add_argument("--context", type=int, default=defaults.context, help="tokens per window")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="BPE vocabulary size")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="transformer blocks")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="model width")
    parser.add_argument("--heads", type=int, default=defaults.heads, help="attention heads")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="peak AdamW rate")
    parser.add_argument(
        "--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warm-up steps"
    )
    parser.add_argument(
        "--holdout-fraction", type=float, default=defaults.holdout_fraction, help="tail of each text held out"
    )
    parser.add_argument(
        "--max-chars", type=int, default=0, help="read at most this many characters of each text (0: all)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed (weights and batch order)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (no bfloat16 autocast)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from textserve.training.demo_lm import DemoLMRecipe, corpus_files, train_demo_lm
    from textserve.training.output import OutputError

    try:
        recipe = DemoLMRecipe(
            vocab_size=args.vocab_size,
            context=args.context,
            layers=args.layers,
            hidden=args.hidden,
            heads=args.heads,
            batch_size=args.batch_size,
            steps=args.steps,
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps,
            holdout_fraction=args.holdout_fraction,
            seed=args.seed,
            threads=args.threads,
            bf16_autocast=not args.no_bf16,
            max_chars_per_text=args.max_chars,
        )
        result = train_demo_lm(
            corpus_files(args.corpus),
            args.out,
            recipe,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (OutputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(
        f"held-out perplexity {result.heldout_perplexity:.2f} over {result.heldout_tokens} tokens "
        f"({result.bits_per_byte:.3f} bits/byte); final training loss {result.final_train_loss:.3f}"
    )
    print(
        f"{result.parameters / 1e6:.2f}M parameters, {result.tokens_seen:,} training tokens, "
        f"{result.train_seconds:.0f} s; written to {result.out}"
    )
    return 0
