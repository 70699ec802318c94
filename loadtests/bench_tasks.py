"""Task-model benchmark: fine-tune on the public data, dev-split quality, time, raw forward latency.

Runs `textserve fine-tune` (in-process, the same code) on the shared public data sets and
reports, for each task, the dev-split figures the task is judged by and the training time
on this machine, then the raw model forward (torch, one short text per call, no service)
p50/p99 at concurrency 1 as the baseline the served model is compared with:
  * sst2: sentiment/stsa.binary.train -> stsa.binary.dev: accuracy (bar: 0.88; users ask 0.90)
  * sst3: sst3_collapsed_train.tsv -> sst3_collapsed_dev.tsv: macro-recall and neutral recall
  * ner:  ner/eng.train -> ner/eng.testa: entity-level P/R/F1 per type (seqeval strict IOB2;
          bar 0.85 F1)
Then each trained model is served by a classifier (sequence_classification /
token_classification) and measured against its raw forward in the same run, interleaved
(loadtests/bench_task_serving.py): one short text per call, p50/p95/p99 at concurrency 1,
throughput at concurrency 1 and 32, ratios served/raw (--serve-seconds 0 skips it).
Only train and dev splits exist here: every figure is a dev-split figure. Models are written
under --out-dir (default /tmp/textserve-bench-tasks), never into the repository.

    python -m loadtests.bench_tasks [--tasks sst2 sst3 ner] [--epochs 3] [--max-seq-length 64]
        [--batch-size 32] [--threads 0] [--data-dir ../shared/data] [--json out.json]

A full run takes tens of minutes on a 2-core machine, so `make bench` skips it; run it with
`make bench-tasks`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from loadtests.common import BenchResult, bench_parser, percentile, print_table, run_bench

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"

TASKS: dict[str, dict[str, Any]] = {
    "sst2": {
        "task": "sequence-classification",
        "train": "sentiment/stsa.binary.train",
        "dev": "sentiment/stsa.binary.dev",
        "label_map": {"0": "negative", "1": "positive"},
    },
    "sst3": {
        "task": "sequence-classification",
        "train": "sentiment/sst3_collapsed_train.tsv",
        "dev": "sentiment/sst3_collapsed_dev.tsv",
        "label_map": {},
    },
    "ner": {
        "task": "token-classification",
        "train": "ner/eng.train",
        "dev": "ner/eng.testa",
        "label_map": {},
    },
}

SHORT_TEXTS = [
    "the film is a charming , funny and moving story .",
    "Peter Blackburn met officials of the European Union in Brussels on Monday .",
    "a dull , lifeless script that never finds its footing .",
    "Shares of Acme Corp rose 3 percent in New York trading .",
]


def raw_forward_latency(model_dir: Path, task: str, calls: int) -> tuple[float, float]:
    """p50 and p99 (ms) of one torch forward of one short text (tokenizing included)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    loader = (
        AutoModelForSequenceClassification
        if task == "sequence-classification"
        else AutoModelForTokenClassification
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = loader.from_pretrained(model_dir).eval()
    times: list[float] = []
    with torch.inference_mode():
        for i in range(calls + 5):
            started = time.perf_counter()
            model(**tokenizer(SHORT_TEXTS[i % len(SHORT_TEXTS)], return_tensors="pt"))
            if i >= 5:  # warm-up calls are not counted
                times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 99)


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from textserve.training.finetune import FineTuneRequest, fine_tune
    from textserve.training.hyper import HyperParameters
    from textserve.training.output import terminate_as_interrupt

    spec = TASKS[name]
    data_dir: Path = args.data_dir
    train, dev = data_dir / spec["train"], data_dir / spec["dev"]
    for path in (train, dev):
        if not path.is_file():
            raise SystemExit(
                f"{path} is absent: the public data sets live in ../shared/data (see --data-dir)"
            )
    max_seq_length = (
        args.ner_max_seq_length if spec["task"] == "token-classification" else args.max_seq_length
    )
    hyper = HyperParameters(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_length=max_seq_length,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    out = args.out_dir / name
    print(f"== {name}: fine-tune {spec['task']} on {train.name} (dev {dev.name}) -> {out}", flush=True)
    request = FineTuneRequest(
        task=spec["task"],
        data=train,
        dev=dev,
        out=out,
        model=args.model,
        label_map=spec["label_map"],
        hyper=hyper,
        overwrite=True,
        progress=not args.no_progress,
    )
    with terminate_as_interrupt():
        result = fine_tune(request)
    metrics = result.metadata["metrics"]
    p50, p99 = raw_forward_latency(result.out, spec["task"], args.latency_calls)
    row: dict[str, Any] = {
        "task": name,
        "dev_split": spec["dev"],
        "train_examples": result.metadata["data"]["train"]["examples"],
        "epochs": result.metadata["training"]["epochs"],
        "train_seconds": result.metadata["training_seconds"],
    }
    if spec["task"] == "sequence-classification":
        row.update(
            accuracy=metrics["accuracy"],
            macro_f1=metrics["macro_f1"],
            macro_recall=metrics["macro_recall"],
            per_class_recall=metrics["per_class_recall"],
        )
        if "neutral" in metrics["per_class_recall"]:
            row["neutral_recall"] = metrics["per_class_recall"]["neutral"]
    else:
        row.update(
            precision=metrics["precision"],
            recall=metrics["recall"],
            f1=metrics["f1"],
            per_type=metrics["per_type"],
        )
    row.update(raw_forward_p50_ms=p50, raw_forward_p99_ms=p99, model_dir=str(result.out))
    return row


async def run(args: argparse.Namespace) -> BenchResult:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    result = BenchResult("tasks", "Fine-tuned task models: dev-split quality, training time, raw forward")
    started = time.perf_counter()
    for name in args.tasks:
        row = run_task(name, args)
        if args.serve_seconds > 0:
            from loadtests.bench_task_serving import measure_served

            served = await measure_served(
                Path(row["model_dir"]), TASKS[name]["task"], args.serve_seconds, args.serve_rounds
            )
            row.update({key: value for key, value in served.items() if key not in ("model_dir",)})
        result.add_row(**row)
    columns = [
        "task", "dev_split", "train_examples", "epochs", "train_seconds", "accuracy", "macro_f1",
        "macro_recall", "neutral_recall", "precision", "recall", "f1", "raw_forward_p50_ms",
        "raw_forward_p99_ms", "raw_p50_ms", "served_c1_p50_ms", "served_c1_p95_ms", "served_c1_p99_ms",
        "served_c32_rps", "c1_p50_ratio_to_raw", "c32_rps_ratio_to_raw",
    ]  # fmt: skip
    result.columns = [c for c in columns if any(c in row for row in result.rows)]
    print_table(result.rows, result.columns, title="fine-tuned task models (figures on the dev split)")
    for row in result.rows:
        for kind, values in row.get("per_type", {}).items():
            print(
                f"  {row['task']} {kind}: P {values['precision']:.4f} R {values['recall']:.4f} "
                f"F1 {values['f1']:.4f}"
            )
    result.notes += [
        "Every quality figure is on the dev split (test splits are held back).",
        f"Hyper-parameters: epochs {args.epochs}, batch {args.batch_size}, max_seq_length "
        f"{args.max_seq_length} (NER {args.ner_max_seq_length}), learning rate {args.learning_rate}, "
        f"seed {args.seed}; torch threads {args.threads or 'default'}.",
        f"Raw forward: torch, one short text per call, {args.latency_calls} calls, concurrency 1.",
        f"Total {time.perf_counter() - started:.0f} s.",
    ]
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["sst2", "sst3", "ner"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the public data sets")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/textserve-bench-tasks"), help="models")
    parser.add_argument(
        "--model", default="", help="model to start from (default: the served embedding model)"
    )
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64, help="sentiment tasks")
    parser.add_argument("--ner-max-seq-length", type=int, default=128, help="NER task")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--latency-calls", type=int, default=200, help="raw forward calls timed per model")
    parser.add_argument("--serve-seconds", type=float, default=5.0, help="served runs' length (0: skip)")
    parser.add_argument("--serve-rounds", type=int, default=3, help="interleaved raw/served rounds")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", type=Path, help="write the result here (textserve-bench/1)")
    run_bench(parser, run)


if __name__ == "__main__":
    main()
