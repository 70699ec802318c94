"""`textserve tune <service>`: measures the batch budget on this device and writes the tuned file.

Loads the service's model as configured (same backend, device and threads), measures
its batching curve, chooses max_batch_tokens and max_batch_size, prints the curve as a
table (a PNG too with --plot) and writes the file `tuned_budget_file` loads at start.
`classifier` measures the classifier's in-process model: the embedding model for zero_shot
and linear_head, the sequence-classification model for sequence_classification.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.config import ConfigError
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.settings import Settings, load_settings
from textserve.tuning.config import TuningConfig

if TYPE_CHECKING:
    from textserve.runtime.encoder import Task

TUNABLE = ("embedding", "classifier")
"""Services whose model the tuner can measure."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `tune`."""
    parser = subparsers.add_parser(
        "tune", help="measure the best batch budget for a service's model on this device"
    )
    parser.add_argument("service", choices=TUNABLE, help="service whose model to measure")
    parser.add_argument("--config", help="YAML config file (else TEXTSERVE_CONFIG_FILE)")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the tuned budget (default: the service's tuned_budget_file)",
    )
    parser.add_argument("--plot", type=Path, help="also write the curve as a PNG plot here")
    parser.add_argument("--seconds", type=float, help="measuring time (tuning.seconds)")
    parser.add_argument(
        "--latency-ceiling-ms", type=float, help="per-batch latency ceiling (tuning.latency_ceiling_ms)"
    )
    parser.add_argument(
        "--text-tokens", type=int, nargs="+", help="text lengths to measure (tuning.text_tokens)"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", help="batch sizes to measure (tuning.batch_sizes)"
    )
    parser.add_argument(
        "--mix-text-tokens", type=int, nargs="+", help="expected traffic lengths (tuning.mix_text_tokens)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the tuned budget as JSON instead of tables"
    )
    parser.set_defaults(handler=_tune)


def _tuning_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "seconds": args.seconds,
        "latency_ceiling_ms": args.latency_ceiling_ms,
        "text_tokens": args.text_tokens,
        "batch_sizes": args.batch_sizes,
        "mix_text_tokens": args.mix_text_tokens,
    }
    return {key: value for key, value in flags.items() if value is not None}


def _service_config(settings: Settings, service: str) -> EmbeddingServiceConfig | ClassifierServiceConfig:
    return settings.classifier if service == "classifier" else settings.embedding


def _task(config: EmbeddingServiceConfig | ClassifierServiceConfig) -> Task:
    """The encoder task the service runs its model with (as its in-process EmbeddingService does)."""
    if isinstance(config, ClassifierServiceConfig) and config.kind == "sequence_classification":
        return "sequence-classification"
    if isinstance(config, ClassifierServiceConfig) and config.kind == "token_classification":
        return "token-classification"
    return "embedding"


def _tune(args: argparse.Namespace) -> int:
    from textserve.runtime.encoder import EncoderModel
    from textserve.tuning import report as tune_report
    from textserve.tuning.measure import tune

    try:
        settings = load_settings(args.config)
        config = _service_config(settings, args.service)
        tuning = TuningConfig.model_validate({**config.tuning.model_dump(), **_tuning_overrides(args)})
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    output: Path = args.output or config.tuned_budget_file or Path(f"tuned-budget-{args.service}.json")
    say = (lambda _msg: None) if args.json else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    started = time.perf_counter()
    if (
        isinstance(config, ClassifierServiceConfig)
        and config.embedding_address
        and _task(config) == "embedding"
    ):
        print(
            f"note: classifier.embedding_address is set ({config.embedding_address}); the classifier's "
            "budget only applies to its in-process model (the embedding service's own budget applies)",
            file=sys.stderr,
        )
    say(f"loading {config.model.path}")
    model = EncoderModel(config.model, _task(config))
    info = model.info
    say(f"loaded {info.name} ({info.backend} on {info.device}) in {model.load_seconds:.1f} s")
    tuned = tune(model, tuning, batcher=config.batcher, progress=say)
    tuned.save(output)
    if args.plot:
        try:
            tune_report.plot(tuned, args.plot)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib); the table follows", file=sys.stderr)
            args.plot = None
    if args.json:
        print(json.dumps(tuned.to_json(), indent=2))
        return 0
    print(tune_report.header(tuned))
    print()
    print(tune_report.curve_table(tuned))
    print()
    print(tune_report.summary(tuned))
    print()
    print(f"written to {output} (total {time.perf_counter() - started:.1f} s)")
    if config.tuned_budget_file is None or config.tuned_budget_file.resolve() != output.resolve():
        print(f"to use it, set {args.service}.tuned_budget_file: {output}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0
