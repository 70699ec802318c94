"""A tuning result and its file: what `textserve tune` writes and a model service loads at start.

A `TuningResult` holds the chosen `BatchBudget` (the batcher's own budget type), how the
budget scored, the measured curve, and its `Provenance` (model, revision, backend,
device, precision, hardware), so a service can tell a budget measured for another model,
device or precision from its own. The file is JSON (format `textserve.tuned-budget/v1`),
flat: the budget's sizes, its scores, the provenance fields, the curve and the fixed-size
comparison. `precision` is an optional key (added after v1; files without it were measured
before precision was a choice, in fp32, and are read and rewritten unchanged).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from textserve.core.batcher import BatchBudget

FORMAT = "textserve.tuned-budget/v1"

_SCORE_KEYS = (
    "predicted_texts_per_second",
    "worst_batch_latency_ms",
    "latency_ceiling_ms",
    "mix_text_tokens",
    "concurrency",
)
_PROVENANCE_KEYS = ("model", "revision", "backend", "device", "hardware", "created", "measure_seconds")
_REQUIRED_KEYS = ("max_batch_size", "max_batch_tokens", *_SCORE_KEYS, *_PROVENANCE_KEYS)
_FILE_KEYS = frozenset({"format", *_REQUIRED_KEYS, "precision", "curve", "fixed_sizes"})
_BEFORE_PRECISION = "fp32"
"""The precision of a file without the key: every model ran in fp32 before `model.precision`."""


class TunedBudgetError(ValueError):
    """The tuned-budget file cannot be read or is not a tuned budget; the message names the file."""


@dataclass(frozen=True)
class TuningPoint:
    """One measured point of the batching curve (the fields InfoResponse.tuning_curve carries)."""

    text_tokens: int
    """Tokens per text in the synthetic batch."""
    batch_size: int
    """Texts in the batch."""
    batch_tokens: int
    """Padded tokens in the batch (batch_size x text_tokens)."""
    batch_latency_ms: float
    """Median forward time of the batch."""
    texts_per_second: float
    """batch_size / latency."""
    repeats: int = 0
    """Timed passes the median is over."""


@dataclass(frozen=True)
class Provenance:
    """What a curve was measured on, and when: a budget holds only for this model and device."""

    model: str
    revision: str
    backend: str
    device: str
    hardware: str
    """The device's model and size (`hardware_description`)."""
    created: str
    """When it was measured (ISO 8601, UTC)."""
    measure_seconds: float
    """How long measuring and choosing took."""
    precision: str | None = None
    """Numeric precision measured (fp32, fp16, bf16, int8); None: a file from before the key (fp32)."""

    def mismatch(
        self, name: str, revision: str, backend: str, device: str, precision: str = "fp32"
    ) -> str | None:
        """Why this was measured for another model, device or precision than the given one
        (None when not)."""
        mine = {
            "model": self.model,
            "revision": self.revision,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision or _BEFORE_PRECISION,
        }
        theirs = {
            "model": name,
            "revision": revision,
            "backend": backend,
            "device": device,
            "precision": precision,
        }
        differ = [f"{key} {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]
        return "; ".join(differ) or None


@dataclass(frozen=True)
class TuningResult:
    """A chosen batch budget, how it scored, the curve it was chosen from, and what it was measured on."""

    budget: BatchBudget
    """The chosen budget; its source says where this result came from (autotune or a file)."""
    predicted_texts_per_second: float
    """Simulated throughput of the chosen budget on the mix, at `concurrency` texts in flight."""
    worst_batch_latency_ms: float
    """Slowest batch forward the budget allows, for texts of any measured length."""
    latency_ceiling_ms: float
    mix_text_tokens: list[int]
    concurrency: int
    provenance: Provenance
    curve: list[TuningPoint] = field(default_factory=list)
    fixed_sizes: list[tuple[int, float]] = field(default_factory=list)
    """Simulated throughput of each measured batch size with no token budget, for comparison."""

    def with_source(self, source: str) -> TuningResult:
        """The same result, its budget marked as coming from `source`."""
        return replace(self, budget=replace(self.budget, source=source))

    def to_json(self) -> dict[str, Any]:
        """Plain data for the file (the budget's source is not written: the file is the source)."""
        provenance = self.provenance
        return {
            "format": FORMAT,
            "max_batch_size": self.budget.max_batch_size,
            "max_batch_tokens": self.budget.max_batch_tokens,
            **{key: getattr(self, key) for key in _SCORE_KEYS},
            "mix_text_tokens": list(self.mix_text_tokens),
            **{key: getattr(provenance, key) for key in _PROVENANCE_KEYS},
            **({} if provenance.precision is None else {"precision": provenance.precision}),
            "curve": [asdict(point) for point in self.curve],
            "fixed_sizes": [{"max_batch_size": s, "texts_per_second": t} for s, t in self.fixed_sizes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "tuned") -> TuningResult:
        """Reads the file's data; raises ValueError (or KeyError/TypeError) when it is not valid."""
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(f"missing keys {missing}")
        unknown = sorted(set(data) - _FILE_KEYS)
        if unknown:
            raise ValueError(f"unexpected keys {unknown}")
        budget = BatchBudget(data["max_batch_size"], data["max_batch_tokens"], source)
        if budget.max_batch_size < 1 or budget.max_batch_tokens < 1:
            raise ValueError(
                f"max_batch_size={budget.max_batch_size} and max_batch_tokens={budget.max_batch_tokens} "
                "must both be >= 1"
            )
        return cls(
            budget=budget,
            **{key: data[key] for key in _SCORE_KEYS},
            provenance=Provenance(
                **{key: data[key] for key in _PROVENANCE_KEYS}, precision=data.get("precision")
            ),
            curve=[TuningPoint(**point) for point in data.get("curve", [])],
            fixed_sizes=[
                (int(item["max_batch_size"]), float(item["texts_per_second"]))
                for item in data.get("fixed_sizes", [])
            ],
        )

    def save(self, path: Path) -> None:
        """Writes the file atomically (replicas sharing a volume never read half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TuningResult:
        """Reads a tuned-budget file, its budget's source `tuned:<path>`; raises TunedBudgetError
        naming the file when it is not one."""
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("the top level is not a JSON object")
            return cls.from_json(data, source=f"tuned:{path}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TunedBudgetError(
                f"tuned_budget_file {path} is not a textserve tuned budget: {exc}"
            ) from exc


def hardware_description(device: str) -> str:
    """The device's model and size, e.g. 'cpu: AMD EPYC 7B13 x2' or 'cuda: NVIDIA L4'."""
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.split(":")[1]) if ":" in device else 0
            return f"cuda: {torch.cuda.get_device_name(index)}"
        except Exception:  # pragma: no cover - no torch CUDA
            return "cuda: unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return f"cpu: {_cpu_model()} x{cores}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


def now_iso() -> str:
    """Current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
