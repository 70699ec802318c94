"""Chooses the device and the ONNX Runtime execution providers at run time."""

from __future__ import annotations

import logging
from typing import Any, Literal

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]


def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch broken or absent
        return False


def resolve_torch_device(choice: DeviceChoice) -> str:
    """'cuda' or 'cpu' for torch; asking for CUDA where there is none fails clearly."""
    if choice == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda:0"
    if choice == "cuda":
        raise RuntimeError("model.device='cuda' but torch sees no CUDA device")
    return "cpu"


def torch_dtype(name: str, device: str) -> Any:
    """The torch dtype of `model.dtype` ("float32", "float16", "bfloat16"); anything else
    ("auto") is float16 on CUDA and float32 elsewhere."""
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return dtypes.get(name, torch.float16 if device.startswith("cuda") else torch.float32)


def resolve_onnx_providers(choice: DeviceChoice) -> tuple[list[str], str]:
    """ONNX Runtime providers to use, best first, and the device name to report."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if choice != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda:0"
    if choice == "cuda":
        raise RuntimeError(
            "model.device='cuda' but onnxruntime has no CUDAExecutionProvider "
            "(install the gpu extra: onnxruntime-gpu)"
        )
    return ["CPUExecutionProvider"], "cpu"


def available_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup CPU quota.

    Torch and ONNX Runtime size their thread pools by the node's cores; under a
    Kubernetes CPU limit that oversubscribes the pod and throttles it badly.
    """
    import math
    import os
    from pathlib import Path

    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def intra_op_threads(configured: int) -> int:
    """Threads for one forward: the configured number, else every CPU the process may use."""
    return configured if configured > 0 else available_cpus()
