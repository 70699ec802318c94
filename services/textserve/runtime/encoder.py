"""Encoder models (embedding, sequence and token classification) behind one small backend contract.

`EncoderBackend` is the contract: load once, then `forward(input_ids, attention_mask)`
returns pooled vectors (task "embedding"), logits (task "sequence-classification") or
per-token logits [batch, seq, labels] (task "token-classification").
Two implementations: ONNX Runtime (graph exported once and cached on disk) and torch.
`EncoderModel.run_batch` pads a batch of id lists to its longest and calls the backend.
`model.precision` picks the numeric precision and, with it, the backend and the graph
(`plan_precision`; reduced precisions pass the manifest gate of runtime/precision.py).
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

from textserve.core.config import ConfigError, ModelConfig
from textserve.runtime import precision as prec
from textserve.runtime.device import (
    cuda_available,
    intra_op_threads,
    resolve_onnx_providers,
    resolve_torch_device,
    torch_dtype,
)
from textserve.runtime.model_files import ModelFiles, resolve_model
from textserve.runtime.pooling import Pooling, pool_states
from textserve.runtime.tokenization import TextTokenizer

log = logging.getLogger(__name__)

Task = Literal["embedding", "sequence-classification", "token-classification"]
ONNX_OPSET = 17


class EncoderBackend(Protocol):
    """What the serving layer needs from an inference backend."""

    name: str
    device: str

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[batch, seq] int64 ids and mask -> [batch, dim] float32 vectors or logits
        ([batch, seq, labels] for token classification)."""
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
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    loader = {
        "embedding": AutoModel,
        "sequence-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
    }[task]
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
            if task != "embedding":
                return output.logits
            return pool_states(output.last_hidden_state, attention_mask, pooling)

    return PooledEncoder().eval()


class TorchEncoderBackend:
    """Runs the model with torch (CUDA when present)."""

    name = "torch"

    def __init__(
        self,
        files: ModelFiles,
        task: Task,
        pooling: Pooling,
        config: ModelConfig,
        precision: prec.Precision | None = None,
    ) -> None:
        import torch

        self.device = resolve_torch_device(config.device)
        torch.set_num_threads(intra_op_threads(config.intra_op_threads))
        self._torch = torch
        halves = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
        dtype = halves[precision] if precision in halves else torch_dtype(config.dtype, self.device)
        self.precision: prec.Precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")  # type: ignore[assignment]
        self._module = _torch_module(files, task, pooling, dtype).to(self.device)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            out = self._module(ids, mask)
            return out.float().cpu().numpy()


@functools.cache
def export_code_hash() -> str:
    """Hash of the code that exports the graph: part of every cache key, so a changed exporter
    never reuses a stale graph."""
    return prec.source_hash(_torch_module, pool_states, export_onnx)


def onnx_cache_path(
    files: ModelFiles,
    task: Task,
    pooling: Pooling,
    cache_dir: Path,
    precision: prec.Precision = "fp32",
    backend: str = "onnxruntime",
) -> Path:
    """Where the graph of this model, task, pooling and precision is cached (with the
    manifest beside it for a reduced precision; torch artifacts hold only the manifest)."""
    import torch

    parts = (
        f"{files.revision}|{task}|{pooling}|opset{ONNX_OPSET}|torch{torch.__version__}|{export_code_hash()}"
    )
    name = f"{files.name}-{task}"
    if precision != "fp32":
        import onnxruntime

        parts += f"|{precision}|{backend}|ort{onnxruntime.__version__}|{prec.BUILD_SOURCE}"
        name += f"-{precision}" if backend == "onnxruntime" else f"-{precision}-{backend}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:16]
    return cache_dir / f"{name}-{key}" / prec.GRAPH


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
                "output": {0: "batch", 1: "sequence"} if task == "token-classification" else {0: "batch"},
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

    def __init__(
        self,
        files: ModelFiles,
        task: Task,
        pooling: Pooling,
        config: ModelConfig,
        graph: Path | None = None,
        precision: prec.Precision = "fp32",
    ) -> None:
        import onnxruntime as ort

        self.precision = precision
        if precision == "int8":
            # Dynamically quantised graphs run MatMulInteger: a CPU kernel.
            providers, self.device = ["CPUExecutionProvider"], "cpu"
        else:
            providers, self.device = resolve_onnx_providers(config.device)
        path = graph or export_onnx(
            files, task, pooling, onnx_cache_path(files, task, pooling, config.onnx_cache_dir)
        )
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
class PrecisionPlan:
    """The precision to load, on which backend, from which artifact folder, and why."""

    precision: prec.Precision
    backend: str
    artifact: Path | None
    """Folder of manifest.json (and model.onnx for ONNX Runtime); None for fp32."""
    reason: str


def artifact_folder(
    config: ModelConfig,
    files: ModelFiles,
    task: Task,
    pooling: Pooling,
    precision: prec.Precision,
    backend: str,
) -> Path:
    """`model.precision_artifact`, else the cache folder of this model and precision."""
    if config.precision_artifact is not None:
        return config.precision_artifact
    return onnx_cache_path(files, task, pooling, config.onnx_cache_dir, precision, backend).parent


def _onnx_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def plan_precision(
    config: ModelConfig, files: ModelFiles, task: Task, pooling: Pooling, precision: str | None = None
) -> PrecisionPlan:
    """Resolves `model.precision` (or `precision`) against the backend and the device; raises
    ConfigError for a combination that cannot run here. `auto` reads the int8 manifest."""
    wanted = precision or config.precision
    backend = "onnxruntime" if config.backend == "auto" else config.backend
    cpu_only = config.device == "cpu" or not cuda_available()
    if wanted == "fp32":
        return PrecisionPlan("fp32", backend, None, "configured")
    if wanted == "int8":
        if config.backend == "torch":
            raise ConfigError(
                "model.precision='int8' runs on ONNX Runtime; model.backend='torch' cannot serve it"
            )
        if config.device == "cuda":
            raise ConfigError(
                "model.precision='int8' is a CPU precision (ONNX Runtime integer kernels); "
                "model.device='cuda': use fp16 or bf16 on a GPU"
            )
        folder = artifact_folder(config, files, task, pooling, "int8", "onnxruntime")
        return PrecisionPlan("int8", "onnxruntime", folder, "configured")
    if wanted == "fp16":
        if cpu_only:
            raise ConfigError(
                "model.precision='fp16' needs a CUDA device and this process sees none "
                f"(model.device={config.device!r}); use fp32 or int8 on CPU"
            )
        if config.backend != "torch" and _onnx_has_cuda():
            backend = "onnxruntime"
        elif config.backend == "onnxruntime":
            raise ConfigError(
                "model.precision='fp16' with model.backend='onnxruntime' needs onnxruntime's "
                "CUDAExecutionProvider (the gpu extra: onnxruntime-gpu)"
            )
        else:
            backend = "torch"
        return PrecisionPlan(
            "fp16", backend, artifact_folder(config, files, task, pooling, "fp16", backend), "configured"
        )
    if wanted == "bf16":
        if config.backend == "onnxruntime":
            raise ConfigError("model.precision='bf16' runs on torch; set model.backend to auto or torch")
        return PrecisionPlan(
            "bf16", "torch", artifact_folder(config, files, task, pooling, "bf16", "torch"), "configured"
        )
    # auto: int8 only where its manifest says faster on this hardware and the gate passes.
    if config.backend == "torch":
        return PrecisionPlan("fp32", backend, None, "auto: model.backend='torch' has no int8 path")
    if not cpu_only:
        return PrecisionPlan("fp32", backend, None, "auto: on CUDA int8 is not used")
    folder = artifact_folder(config, files, task, pooling, "int8", "onnxruntime")
    try:
        manifest = prec.check_manifest(
            folder, "int8", config, model=files.name, revision=files.revision, task=task
        )
    except prec.PrecisionGateError as exc:
        return PrecisionPlan("fp32", backend, None, f"auto: int8 not used: {exc}")
    from textserve.tuning.result import hardware_description

    here = hardware_description("cpu")
    if manifest.hardware != here:
        return PrecisionPlan(
            "fp32", backend, None, f"auto: int8 was measured on {manifest.hardware!r}, not here ({here!r})"
        )
    if manifest.speedup <= 1.0:
        return PrecisionPlan(
            "fp32",
            backend,
            None,
            f"auto: int8 measured {manifest.speedup:.2f}x fp32's throughput here; not faster",
        )
    return PrecisionPlan(
        "int8",
        "onnxruntime",
        folder,
        f"auto: int8 measured {manifest.speedup:.2f}x fp32's throughput here and its fidelity "
        "passes the gate",
    )


def preflight(config: ModelConfig, task: Task) -> PrecisionPlan:
    """The precision plan and its gate, without loading the model: a service checks this when it
    is built, so an artifact that may not be served fails the start at once (ConfigError)."""
    files = resolve_model(config.path, config.name, config.revision)
    pooling = detect_pooling(files, config.pooling)
    plan = plan_precision(config, files, task, pooling)
    if plan.artifact is not None:
        prec.check_manifest(
            plan.artifact, plan.precision, config, model=files.name, revision=files.revision, task=task
        )
    return plan


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
    precision: str = "fp32"
    """Numeric precision in force: fp32, fp16, bf16 or int8."""


class EncoderModel:
    """Tokenizer + backend for one encoder model; `run_batch` is the batcher's work function."""

    def __init__(
        self,
        config: ModelConfig,
        task: Task = "embedding",
        *,
        precision: str | None = None,
        gate: bool = True,
    ) -> None:
        """`precision` overrides model.precision; gate=False loads a reduced-precision artifact
        without its manifest (only `textserve quantize` does, to measure it)."""
        started = time.perf_counter()
        self.config = config
        self.task = task
        self.files = resolve_model(config.path, config.name, config.revision)
        self.tokenizer = TextTokenizer(self.files, config.max_length)
        self.pooling = detect_pooling(self.files, config.pooling)
        self.plan = plan_precision(config, self.files, task, self.pooling, precision)
        self.manifest: prec.Manifest | None = None
        plan = self.plan
        if plan.artifact is not None and gate:
            self.manifest = prec.check_manifest(
                plan.artifact,
                plan.precision,
                config,
                model=self.files.name,
                revision=self.files.revision,
                task=task,
            )
        self.backend: OnnxEncoderBackend | TorchEncoderBackend
        if plan.backend == "onnxruntime":
            graph = None
            if plan.artifact is not None:
                graph = plan.artifact / prec.GRAPH
                if not graph.is_file():
                    raise prec.PrecisionGateError(
                        f"model.precision={plan.precision}: no graph at {graph}; "
                        "run `textserve quantize <service>`"
                    )
            self.backend = OnnxEncoderBackend(self.files, task, self.pooling, config, graph, plan.precision)
        else:
            self.backend = TorchEncoderBackend(
                self.files, task, self.pooling, config, None if plan.precision == "fp32" else plan.precision
            )
        hf_config = self.files.read_json("config.json") or {}
        probe = self.run_batch([[self.tokenizer.pad_id + 1] * 2])[0]
        labels: tuple[str, ...] = ()
        if task != "embedding":
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
            precision=self.backend.precision,
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
        """One forward over a batch of id lists; one float32 row (pooled vector or logits) per
        list, or for token classification one [tokens, labels] array per list (padding cut off)."""
        input_ids, mask = self.pad(batch)
        output = self.backend.forward(input_ids, mask)
        if self.task == "token-classification":
            return [output[row, : len(ids)] for row, ids in enumerate(batch)]
        return list(output)
