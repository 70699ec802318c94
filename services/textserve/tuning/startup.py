"""A model service's batch budget at start: the tuned file, a fresh measurement, or the config.

`startup_budget` decides (run it off the event loop; measuring takes seconds):
- `tuned_budget_file` exists and was measured for this model, revision, backend and
  device: it is used (hardware that differs is only logged, unless autotune is on).
- Otherwise, with `autotune: true`, the budget is measured now and written to the file
  when one is configured.
- Otherwise the configured batcher sizes stay. A file that exists but is not a tuned
  budget fails the start (TunedBudgetError naming the file).
`publish_tuning` puts the chosen curve into the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from textserve.core import metrics
from textserve.core.config import BatcherConfig
from textserve.tuning.budget import TunedBudget, hardware_description
from textserve.tuning.config import TuningConfig
from textserve.tuning.measure import TunableModel, tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartupBudget:
    """The tuned budget to apply and where it came from (the BatchBudget.source string)."""

    tuned: TunedBudget
    source: str


def startup_budget(
    model: TunableModel,
    tuned_budget_file: Path | None,
    autotune: bool,
    tuning: TuningConfig,
    *,
    batcher: BatcherConfig | None = None,
) -> StartupBudget | None:
    """The budget to start with, or None to keep the configured batcher sizes."""
    info = model.info
    if tuned_budget_file is not None and tuned_budget_file.is_file():
        tuned = TunedBudget.load(tuned_budget_file)
        wrong = tuned.mismatch(info.name, info.revision, info.backend, info.device)
        here = hardware_description(info.device)
        if wrong is None and (tuned.hardware == here or not autotune):
            if tuned.hardware != here:
                log.warning(
                    "tuned budget was measured on other hardware; using it anyway",
                    extra={"file": str(tuned_budget_file), "measured_on": tuned.hardware, "here": here},
                )
            return StartupBudget(tuned, f"tuned:{tuned_budget_file}")
        log.warning(
            "tuned budget file is for another model or device; not used",
            extra={
                "file": str(tuned_budget_file),
                "mismatch": wrong or f"hardware {tuned.hardware!r} != {here!r}",
            },
        )
    elif tuned_budget_file is not None and not autotune:
        log.warning(
            "tuned_budget_file does not exist; using the configured batch budget",
            extra={"file": str(tuned_budget_file)},
        )
    if not autotune:
        return None
    log.info("autotune: measuring the batch budget before serving", extra={"model": info.name})
    tuned = tune(model, tuning, batcher=batcher)
    log.info(
        "autotune: budget chosen",
        extra={
            "max_batch_size": tuned.max_batch_size,
            "max_batch_tokens": tuned.max_batch_tokens,
            "seconds": round(tuned.measure_seconds, 1),
        },
    )
    if tuned_budget_file is None:
        return StartupBudget(tuned, "autotune")
    tuned.save(tuned_budget_file)
    return StartupBudget(tuned, f"tuned:{tuned_budget_file}")


def publish_tuning(tuned: TunedBudget, service: str, model: str) -> None:
    """Exports the measured curve and the predicted throughput as gauges."""
    for point in tuned.curve:
        labels = {
            "service": service,
            "model": model,
            "text_tokens": str(point.text_tokens),
            "batch_size": str(point.batch_size),
        }
        metrics.TUNING_TEXTS_PER_SECOND.labels(**labels).set(point.texts_per_second)
        metrics.TUNING_BATCH_LATENCY.labels(**labels).set(point.batch_latency_ms / 1000.0)
    metrics.TUNING_PREDICTED_THROUGHPUT.labels(service=service, model=model).set(
        tuned.predicted_texts_per_second
    )
