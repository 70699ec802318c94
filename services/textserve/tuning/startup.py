"""A model service's batch budget at start: the tuned file, a fresh measurement, or the config.

`startup_budget` decides (run it off the event loop; measuring takes seconds) and returns
the `TuningResult` to apply, its budget's source saying where it came from, or None:
- `tuned_budget_file` exists and was measured for this model, revision, backend, device
  and precision: it is used (hardware that differs is only logged, unless autotune is on).
  A file measured for another precision (an fp32 curve under int8, say) is not applied:
  a warning names both precisions, and the service starts as when there is no file.
- Otherwise, with `autotune: true`, the budget is measured now and written to the file
  when one is configured.
- Otherwise the configured batcher sizes stay. A file that exists but is not a tuned
  budget fails the start (TunedBudgetError naming the file).
`publish_tuning` puts the result's curve into the metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

from textserve.core import metrics
from textserve.core.config import BatcherConfig
from textserve.tuning.config import TuningConfig
from textserve.tuning.measure import TunableModel, tune
from textserve.tuning.result import TuningResult, hardware_description

log = logging.getLogger(__name__)


def startup_budget(
    model: TunableModel,
    tuned_budget_file: Path | None,
    autotune: bool,
    tuning: TuningConfig,
    *,
    batcher: BatcherConfig | None = None,
) -> TuningResult | None:
    """The tuning result to start with (its budget's source: `tuned:<file>` or `autotune`), or
    None to keep the configured batcher sizes."""
    info = model.info
    if tuned_budget_file is not None and tuned_budget_file.is_file():
        tuned = TuningResult.load(tuned_budget_file)
        measured = tuned.provenance
        wrong = measured.mismatch(info.name, info.revision, info.backend, info.device, info.precision)
        here = hardware_description(info.device)
        if wrong is None and (measured.hardware == here or not autotune):
            if measured.hardware != here:
                log.warning(
                    "tuned budget was measured on other hardware; using it anyway",
                    extra={"file": str(tuned_budget_file), "measured_on": measured.hardware, "here": here},
                )
            return tuned
        mismatch = wrong or f"hardware {measured.hardware!r} != {here!r}"
        log.warning(
            "tuned budget file %s is for another model, device or precision (%s); not used",
            tuned_budget_file,
            mismatch,
            extra={"file": str(tuned_budget_file), "mismatch": mismatch},
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
            "max_batch_size": tuned.budget.max_batch_size,
            "max_batch_tokens": tuned.budget.max_batch_tokens,
            "seconds": round(tuned.provenance.measure_seconds, 1),
        },
    )
    if tuned_budget_file is None:
        return tuned
    tuned.save(tuned_budget_file)
    return tuned.with_source(f"tuned:{tuned_budget_file}")


def publish_tuning(tuned: TuningResult, service: str, model: str, version: str = "1") -> None:
    """Exports the measured curve and the predicted throughput as gauges."""
    for point in tuned.curve:
        labels = {
            "service": service,
            "model": model,
            "version": version,
            "text_tokens": str(point.text_tokens),
            "batch_size": str(point.batch_size),
        }
        metrics.TUNING_TEXTS_PER_SECOND.labels(**labels).set(point.texts_per_second)
        metrics.TUNING_BATCH_LATENCY.labels(**labels).set(point.batch_latency_ms / 1000.0)
    metrics.TUNING_PREDICTED_THROUGHPUT.labels(service=service, model=model, version=version).set(
        tuned.predicted_texts_per_second
    )
