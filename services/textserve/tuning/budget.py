"""The tuned batch budget and its file: what `textserve tune` writes and a service loads at start.

The file is JSON (format `textserve.tuned-budget/v1`): the chosen budget, the measured
curve, and what it was measured on (model, revision, backend, device, hardware), so a
service can tell a budget measured for another model or device from its own.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "textserve.tuned-budget/v1"


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
class TunedBudget:
    """A chosen batch budget, how it was chosen, and the curve it was chosen from."""

    max_batch_size: int
    max_batch_tokens: int
    predicted_texts_per_second: float
    """Simulated throughput of the chosen budget on the mix, at `concurrency` texts in flight."""
    worst_batch_latency_ms: float
    """Slowest batch forward the budget allows, for texts of any measured length."""
    latency_ceiling_ms: float
    mix_text_tokens: list[int]
    concurrency: int
    model: str
    revision: str
    backend: str
    device: str
    hardware: str
    created: str
    measure_seconds: float
    curve: list[TuningPoint] = field(default_factory=list)
    fixed_sizes: list[tuple[int, float]] = field(default_factory=list)
    """Simulated throughput of each measured batch size with no token budget, for comparison."""

    def mismatch(self, name: str, revision: str, backend: str, device: str) -> str | None:
        """Why this budget does not belong to the given model and device (None when it does)."""
        mine = {
            "model": self.model,
            "revision": self.revision,
            "backend": self.backend,
            "device": self.device,
        }
        theirs = {"model": name, "revision": revision, "backend": backend, "device": device}
        differ = [f"{key} {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]
        return "; ".join(differ) or None

    def to_json(self) -> dict[str, Any]:
        """Plain data for the file."""
        data = asdict(self)
        data["fixed_sizes"] = [{"max_batch_size": s, "texts_per_second": t} for s, t in self.fixed_sizes]
        return {"format": FORMAT, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TunedBudget:
        """Reads the file's data; raises ValueError (or KeyError/TypeError) when it is not valid."""
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        values = {key: value for key, value in data.items() if key != "format"}
        values["curve"] = [TuningPoint(**point) for point in values.get("curve", [])]
        values["fixed_sizes"] = [
            (int(item["max_batch_size"]), float(item["texts_per_second"]))
            for item in values.get("fixed_sizes", [])
        ]
        budget = cls(**values)
        if budget.max_batch_size < 1 or budget.max_batch_tokens < 1:
            raise ValueError(
                f"max_batch_size={budget.max_batch_size} and max_batch_tokens={budget.max_batch_tokens} "
                "must both be >= 1"
            )
        return budget

    def save(self, path: Path) -> None:
        """Writes the file atomically (replicas sharing a volume never read half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TunedBudget:
        """Reads a tuned-budget file; raises TunedBudgetError naming the file when it is not one."""
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("the top level is not a JSON object")
            return cls.from_json(data)
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
