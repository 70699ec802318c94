"""Half precision: fp16 on CUDA (ONNX Runtime's CUDA provider on a float16 graph, or torch) and
bf16 (torch, on CUDA or on this CPU). Each artifact is built and measured by `textserve
quantize`'s code, then loaded through the gate. The CUDA tests skip, with the reason, where
there is no CUDA device; fp16 on a CPU-only process is a configuration error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from textserve.commands.quantize import BUILT_IN_TEXTS, build_artifact
from textserve.core.config import ConfigError
from textserve.runtime import precision as prec
from textserve.runtime.device import cuda_available
from textserve.runtime.encoder import EncoderModel

from tests.support import model_config

TEXTS = list(BUILT_IN_TEXTS) * 2


def _onnx_cuda() -> bool:
    import onnxruntime as ort

    return cuda_available() and "CUDAExecutionProvider" in ort.get_available_providers()


needs_cuda = pytest.mark.skipif(
    not cuda_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)
needs_onnx_cuda = pytest.mark.skipif(
    not _onnx_cuda(), reason="no CUDA device with onnxruntime's CUDAExecutionProvider (onnxruntime-gpu)"
)


def _built_and_served(precision: prec.Precision, tmp_path: Path, **overrides: str) -> EncoderModel:
    config = model_config(precision=precision, precision_artifact=tmp_path / precision, **overrides)
    folder, manifest = build_artifact(
        config, "embedding", precision=precision, eval_texts=TEXTS, seconds=0.5, shapes=((1, 16), (16, 16))
    )
    assert (folder / prec.MANIFEST).is_file()
    assert manifest.fidelity.mean_cosine is not None and manifest.fidelity.mean_cosine >= 0.99
    model = EncoderModel(config)  # through the gate
    assert model.info.precision == precision
    fp32 = EncoderModel(model_config())
    ids = [e.ids for e in fp32.tokenizer.encode_many(TEXTS)]
    cos = prec.cosines(np.stack(fp32.run_batch(ids)), np.stack(model.run_batch(ids)))
    assert cos.min() >= 0.99, cos.min()
    return model


@needs_onnx_cuda
def test_fp16_on_onnxruntime_cuda(tmp_path: Path) -> None:
    model = _built_and_served("fp16", tmp_path)
    assert model.info.backend == "onnxruntime" and model.info.device.startswith("cuda")
    assert (tmp_path / "fp16" / prec.GRAPH).is_file()


@needs_cuda
def test_fp16_on_torch_cuda(tmp_path: Path) -> None:
    model = _built_and_served("fp16", tmp_path, backend="torch")
    assert model.info.backend == "torch" and model.info.device.startswith("cuda")


@needs_cuda
def test_bf16_on_torch_cuda(tmp_path: Path) -> None:
    model = _built_and_served("bf16", tmp_path)
    assert model.info.backend == "torch" and model.info.device.startswith("cuda")


def test_bf16_on_torch_cpu(tmp_path: Path) -> None:
    model = _built_and_served("bf16", tmp_path, device="cpu")
    assert model.info.backend == "torch" and model.info.device == "cpu"


@pytest.mark.skipif(cuda_available(), reason="a CUDA device is present: fp16 is possible here")
def test_fp16_without_cuda_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.precision='fp16' needs a CUDA device"):
        EncoderModel(model_config(precision="fp16"))
