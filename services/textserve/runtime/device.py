"""Chooses the device and the ONNX Runtime execution providers at run time."""

from __future__ import annotations

import logging
from typing import Literal

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
