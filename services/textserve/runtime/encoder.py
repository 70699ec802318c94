"""Encoder models (embedding and sequence classification) behind one small backend contract.

`EncoderBackend` is the contract: load once, then `forward(input_ids, attention_mask)`
returns pooled vectors (task "embedding") or logits (task "sequence-classification").
Two implementations: ONNX Runtime (graph exported once and cached on disk) and torch.
`EncoderModel.run_batch` pads a batch of id lists to its longest and calls the backend.
The Encoder (runtime/encoder_engine.py) puts a batcher and the task verbs around it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from textserve.core.config import ModelConfig
from textserve.runtime.device import (
    intra_op_threads,
    resolve_onnx_providers,
    resolve_torch_device,
    torch_dtype,
)
from textserve.runtime.model_files import ModelFiles, resolve_model
from textserve.runtime.tokenization import TextTokenizer

log = logging.getLogger(__name__)

Task = Literal["embedding", "sequence-classification"]
Pooling = Literal["mean", "cls"]
ONNX_OPSET = 17


class EncoderBackend(Protocol):
    """What the serving layer needs from an inference backend."""

    name: str
    device: str

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[batch, seq] int64 ids and mask -> [batch, dim] float32 vectors or logits."""
        ...


def detect_pooling(files: ModelFiles, configured: str) -> Pooling:
    """Pooling from config, else from the sentence-transformers pooling config, else mean."""
    if configured in ("mean", "cls"):
        return configured  # type: ignore[return-value]
    modules = files.read_json("1_Pooling/config.json")
    if modules and modules.get("pooling_mode_cls_token") and not modules.get("pooling_mode_mean_tokens"):
        return "cls"
    return "mean"


def _torch_module(files: ModelFiles, task: Task, pooling: Pooling, dtype: Any = None) -> Any:
    """The HF model wrapped so that its forward returns pooled vectors or logits."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    loader = AutoModel if task == "embedding" else AutoModelForSequenceClassification
    kwargs: dict[str, Any] = {"attn_implementation": "eager"}
    if dtype is not None:
        kwargs["dtype"] = dtype
    hf_model = loader.from_pretrained(str(files.path), **kwargs)
    hf_model.eval()

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if task == "sequence-classification":
                return output.logits
            states = output.last_hidden_state
            if pooling == "cls":
                return states[:, 0]
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            summed = (states * mask).sum(dim=1)
            return summed / mask.sum(dim=1).clamp(min=1e-9)

    return PooledEncoder().eval()


class TorchEncoderBackend:
    """Runs the model with torch (CUDA when present)."""

    name = "torch"

    def __init__(self, files: ModelFiles, task: Task, pooling: Pooling, config: ModelConfig) -> None:
        import torch

        self.device = resolve_torch_device(config.device)
        torch.set_num_threads(intra_op_threads(config.intra_op_threads))
        self._torch = torch
        self._module = _torch_module(files, task, pooling, torch_dtype(config.dtype, self.device)).to(
            self.device
        )

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            out = self._module(ids, mask)
            return out.float().cpu().numpy()


def onnx_cache_path(files: ModelFiles, task: Task, pooling: Pooling, cache_dir: Path) -> Path:
    """Where the exported graph of this model, task and pooling is cached."""
    import torch

    key = hashlib.sha256(
        f"{files.revision}|{task}|{pooling}|opset{ONNX_OPSET}|torch{torch.__version__}".encode()
    ).hexdigest()[:16]
    return cache_dir / f"{files.name}-{task}-{key}" / "model.onnx"


def export_onnx(files: ModelFiles, task: Task, pooling: Pooling, target: Path) -> Path:
    """Exports the pooled model to ONNX with dynamic batch and sequence axes (once; cached)."""
    if target.is_file():
        return target
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    module = _torch_module(files, task, pooling)
    dummy_ids = torch.ones((2, 8), dtype=torch.int64)
    dummy_mask = torch.ones((2, 8), dtype=torch.int64)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    with torch.inference_mode():
        torch.onnx.export(
            module,
            (dummy_ids, dummy_mask),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["output"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "output": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    os.replace(tmp, target)  # atomic: concurrent replicas never read half a file
    log.info("exported ONNX graph", extra={"path": str(target), "seconds": time.perf_counter() - started})
    return target


class OnnxEncoderBackend:
    """Runs the exported graph with ONNX Runtime (CUDA provider when present)."""

    name = "onnxruntime"

    def __init__(self, files: ModelFiles, task: Task, pooling: Pooling, config: ModelConfig) -> None:
        import onnxruntime as ort

        providers, self.device = resolve_onnx_providers(config.device)
        path = export_onnx(files, task, pooling, onnx_cache_path(files, task, pooling, config.onnx_cache_dir))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads(config.intra_op_threads)
        # Idle ORT threads must not spin: the event loop shares these cores with them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (output,) = self._session.run(["output"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return np.asarray(output, dtype=np.float32)


@dataclass(frozen=True)
class EncoderInfo:
    """What clients are told about a loaded encoder."""

    name: str
    revision: str
    backend: str
    device: str
    max_length: int
    dimensions: int
    pooling: Pooling
    labels: tuple[str, ...]


class EncoderModel:
    """Tokenizer + backend for one encoder model; `run_batch` is the batcher's work function."""

    def __init__(self, config: ModelConfig, task: Task = "embedding") -> None:
        started = time.perf_counter()
        self.config = config
        self.task = task
        self.files = resolve_model(config.path, config.name, config.revision)
        self.tokenizer = TextTokenizer(self.files, config.max_length)
        self.pooling = detect_pooling(self.files, config.pooling)
        backend_name = "onnxruntime" if config.backend == "auto" else config.backend
        self.backend: EncoderBackend
        if backend_name == "onnxruntime":
            self.backend = OnnxEncoderBackend(self.files, task, self.pooling, config)
        else:
            self.backend = TorchEncoderBackend(self.files, task, self.pooling, config)
        hf_config = self.files.read_json("config.json") or {}
        probe = self.run_batch([[self.tokenizer.pad_id + 1] * 2])[0]
        labels: tuple[str, ...] = ()
        if task == "sequence-classification":
            id2label = hf_config.get("id2label") or {}
            labels = tuple(str(id2label.get(str(i), f"LABEL_{i}")) for i in range(probe.shape[-1]))
        self.info = EncoderInfo(
            name=self.files.name,
            revision=self.files.revision,
            backend=self.backend.name,
            device=self.backend.device,
            max_length=self.tokenizer.max_length,
            dimensions=int(probe.shape[-1]),
            pooling=self.pooling,
            labels=labels,
        )
        self.load_seconds = time.perf_counter() - started

    @functools.cached_property
    def vocab_size(self) -> int:
        """Token ids the model accepts are below this (tokenizer and embedding table agree)."""
        sizes = [len(self.tokenizer.hf)]
        configured = (self.files.read_json("config.json") or {}).get("vocab_size")
        if isinstance(configured, int) and configured > 0:
            sizes.append(configured)
        return min(sizes)

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pads id lists to the longest; returns int64 ids and attention mask."""
        longest = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), longest), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return input_ids, mask

    def run_batch(self, batch: list[list[int]]) -> list[np.ndarray]:
        """One forward over a batch of id lists; one float32 row (pooled vector or logits) per list."""
        input_ids, mask = self.pad(batch)
        output = self.backend.forward(input_ids, mask)
        return list(output)
