"""`textserve fine-tune`: fine-tunes a whole encoder with a classification head (training/).

--task sequence-classification reads csv / jsonl / tsv (text,label) or `<label> <text>`
lines (SST); --task token-classification reads CoNLL (IOB1 or IOB2) or JSONL with
character spans. Prints the dev-split metrics and writes a Hugging Face model directory
with `textserve-model.json`, all at once at the end (nothing on error or interrupt).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `fine-tune`."""
    from textserve.training.hyper import HyperParameters

    defaults = HyperParameters()
    parser = subparsers.add_parser(
        "fine-tune",
        help="fine-tune an encoder for sequence or token classification (writes a model directory)",
    )
    parser.add_argument(
        "--task", required=True, choices=("sequence-classification", "token-classification"), help="the head"
    )
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="training file: .csv/.jsonl/.tsv (text,label) or '<label> <text>' lines; "
        "token-classification: CoNLL or .jsonl with entity spans",
    )
    parser.add_argument(
        "--dev", type=Path, help="dev split file, same formats (default: hold out --dev-fraction)"
    )
    parser.add_argument(
        "--dev-fraction", type=float, default=0.1, help="share of --data held out as dev when no --dev"
    )
    parser.add_argument(
        "--model", default="", help="model directory to start from (default: the served embedding model)"
    )
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument(
        "--label-map", default="", help="rename labels as read, e.g. '0=negative,1=positive' (sequence task)"
    )
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes over the data")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="step cap (-1: none)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="peak AdamW rate")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="examples per step")
    parser.add_argument(
        "--grad-accum", type=int, default=defaults.gradient_accumulation_steps, help="batches per step"
    )
    parser.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio, help="warm-up share")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW decay")
    parser.add_argument(
        "--max-seq-length", type=int, default=defaults.max_seq_length, help="tokens per example"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed (head, order, dropout)")
    parser.add_argument(
        "--patience", type=int, default=defaults.patience, help="evaluations without gain before stopping"
    )
    parser.add_argument(
        "--eval-steps", type=int, default=defaults.eval_steps, help="evaluate every N steps (0: each epoch)"
    )
    parser.add_argument("--no-fp16", action="store_true", help="no mixed precision even on CUDA")
    parser.add_argument(
        "--no-class-weights",
        action="store_true",
        help="sequence task: plain loss (default: balanced class weights, so small classes count)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_fine_tune)


def parse_label_map(text: str) -> dict[str, str]:
    """'0=negative,1=positive' -> {'0': 'negative', '1': 'positive'}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"--label-map: {item!r} is not 'label=name'")
        mapping[source.strip()] = target.strip()
    return mapping


def _fine_tune(args: argparse.Namespace) -> int:
    from textserve.training.data import DataError
    from textserve.training.finetune import FineTuneRequest, fine_tune
    from textserve.training.hyper import HyperParameters
    from textserve.training.metrics import format_classification, format_entities
    from textserve.training.output import OutputError, terminate_as_interrupt

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        hyper = HyperParameters(
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            gradient_accumulation_steps=args.grad_accum,
            warmup_ratio=args.warmup_ratio,
            weight_decay=args.weight_decay,
            max_seq_length=args.max_seq_length,
            seed=args.seed,
            patience=args.patience,
            eval_steps=args.eval_steps,
            max_steps=args.max_steps,
            fp16=not args.no_fp16,
            class_weighted=not args.no_class_weights,
        )
        request = FineTuneRequest(
            task=args.task,
            data=args.data,
            out=args.out,
            dev=args.dev,
            dev_fraction=args.dev_fraction,
            model=args.model,
            label_map=parse_label_map(args.label_map),
            hyper=hyper,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        with terminate_as_interrupt():
            result = fine_tune(request)
    except (DataError, OutputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    metadata = result.metadata
    if args.task == "sequence-classification":
        print(format_classification(metadata["metrics"], metadata["labels"]))
    else:
        print(format_entities(metadata["metrics"]))
    print(
        f"trained in {metadata['training_seconds']:.1f} s ({metadata['training']['optimizer_steps']} steps, "
        f"{metadata['training']['epochs']:.2f} epochs); wrote {result.out}"
    )
    return 0
