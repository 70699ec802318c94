"""Numeric precision of an encoder model: building reduced-precision artifacts, their manifest,
and the gate that refuses to serve one whose measured fidelity is missing or below the floor.

Precisions (`model.precision`):
- fp32: the exported graph (or the torch model) as trained; the default.
- int8: ONNX Runtime quantisation on CPU. `dynamic` (the default, chosen by measurement:
  README "Precision") quantises the weights per channel and the activations per batch at run
  time; `static` calibrates activation ranges on given texts (QDQ). The attention value
  projections stay fp32 by default: on all-MiniLM-L6-v2 that lifts the worst cosine against
  fp32 over 1,000 real sentences from 0.966 to 0.972 for 3 % of the fp32 size.
- fp16: CUDA only; ONNX Runtime's CUDA provider on a float16 graph (converted from the fp32
  export, inputs and outputs kept float32) or torch in half precision.
- bf16: torch in bfloat16 (CUDA, or CPUs whose torch build supports it).

Every reduced precision is served from an artifact directory: `manifest.json` (written by
`textserve quantize`: sizes, throughput against fp32 on this device, fidelity over evaluation
texts) and, for ONNX Runtime, the graph `model.onnx`. `check_manifest` is the gate.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from textserve.core.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "int8"]
QuantMethod = Literal["dynamic", "static"]
REDUCED: tuple[Precision, ...] = ("fp16", "bf16", "int8")
MANIFEST = "manifest.json"
GRAPH = "model.onnx"
MANIFEST_FORMAT = 1
DEFAULT_METHOD: QuantMethod = "dynamic"
KEEP_FP32_PATTERNS: tuple[str, ...] = ("/attention/self/value/",)
"""Node-name parts kept in fp32 by the int8 recipes (BERT-style exports name them so)."""


class PrecisionGateError(ConfigError):
    """A reduced-precision artifact may not be served: no manifest, another model's, or a
    measured fidelity below the configured floor; the message names the figure and the floor."""


@dataclass(frozen=True)
class Fidelity:
    """How close the reduced model's outputs are to fp32 over the evaluation texts."""

    texts: int
    """Evaluation texts compared."""
    source: str
    """Where they came from (a file path and its SHA-256 prefix, or "built-in")."""
    mean_cosine: float | None = None
    """Mean cosine between reduced and fp32 outputs (vectors, or logits of a classifier)."""
    min_cosine: float | None = None
    """Lowest cosine over the texts."""
    agreement: float | None = None
    """Share of texts whose top label is the same as fp32's (classification models)."""
    labelled: int = 0
    """Labelled texts behind the accuracies (0: no labelled file given)."""
    accuracy_fp32: float | None = None
    accuracy: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        """fp32 accuracy minus reduced accuracy (a share, 0.01 = one point), when labelled."""
        if self.accuracy is None or self.accuracy_fp32 is None:
            return None
        return self.accuracy_fp32 - self.accuracy


@dataclass(frozen=True)
class SpeedPoint:
    """Texts per second of both models at one batch shape, measured interleaved."""

    batch_size: int
    text_tokens: int
    fp32_texts_per_second: float
    texts_per_second: float

    @property
    def speedup(self) -> float:
        return self.texts_per_second / self.fp32_texts_per_second if self.fp32_texts_per_second else 0.0


@dataclass(frozen=True)
class Manifest:
    """What `textserve quantize` measured about one reduced-precision artifact."""

    precision: Precision
    method: str
    """int8: dynamic or static; fp16/bf16: the backend's cast."""
    model: str
    revision: str
    task: str
    pooling: str
    backend: str
    device: str
    hardware: str
    """Where the throughput was measured (tuning.result.hardware_description)."""
    artifact_key: str
    """The cache key the artifact was built under (model, task, precision, code hash)."""
    fp32_bytes: int
    bytes: int
    """Size of the reduced graph (0 when the backend casts at load and stores no graph)."""
    fidelity: Fidelity
    throughput: tuple[SpeedPoint, ...]
    calibration_texts: int = 0
    created: str = ""
    seconds: float = 0.0
    format: int = MANIFEST_FORMAT
    keep_fp32: tuple[str, ...] = field(default=())

    @property
    def size_ratio(self) -> float:
        return self.bytes / self.fp32_bytes if self.fp32_bytes and self.bytes else 1.0

    @property
    def speedup(self) -> float:
        """Geometric mean of the per-shape speed-ups against fp32 (>1: faster)."""
        ups = [p.speedup for p in self.throughput if p.speedup > 0]
        return math.exp(sum(math.log(u) for u in ups) / len(ups)) if ups else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fidelity"]["accuracy_drop"] = self.fidelity.accuracy_drop
        data["size_ratio"] = round(self.size_ratio, 4)
        data["speedup"] = round(self.speedup, 3)
        for point, raw in zip(self.throughput, data["throughput"], strict=True):
            raw["speedup"] = round(point.speedup, 3)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        fidelity = {k: v for k, v in data["fidelity"].items() if k != "accuracy_drop"}
        points = tuple(
            SpeedPoint(**{k: v for k, v in p.items() if k != "speedup"}) for p in data.get("throughput", [])
        )
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields.update(fidelity=Fidelity(**fidelity), throughput=points)
        fields["keep_fp32"] = tuple(fields.get("keep_fp32", ()))
        return cls(**fields)

    def save(self, folder: Path) -> Path:
        path = folder / MANIFEST
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrecisionGateError(f"{path}: not a readable precision manifest ({exc})") from exc


def check_manifest(
    folder: Path, precision: Precision, config: ModelConfig, *, model: str, revision: str, task: str
) -> Manifest:
    """The gate: the artifact's manifest, or PrecisionGateError naming the figure and the floor."""
    path = folder / MANIFEST
    if not path.is_file():
        raise PrecisionGateError(
            f"model.precision={precision}: no manifest at {path}; a reduced-precision model is served "
            "only once measured against fp32: run `textserve quantize <service>` first"
        )
    manifest = Manifest.load(path)
    expected = {"precision": precision, "model": model, "revision": revision, "task": task}
    for name, want in expected.items():
        have = getattr(manifest, name)
        if have != want:
            raise PrecisionGateError(f"{path}: manifest is for {name} {have!r}, not {want!r}")
    fid = manifest.fidelity
    figures = 0
    if fid.mean_cosine is not None:
        figures += 1
        if fid.mean_cosine < config.min_cosine:
            raise PrecisionGateError(
                f"{path}: {precision} mean cosine against fp32 {fid.mean_cosine:.4f} (over {fid.texts} "
                f"texts) is below the floor model.min_cosine={config.min_cosine}"
            )
    drop = fid.accuracy_drop
    if drop is not None:
        figures += 1
        if drop > config.max_accuracy_drop:
            raise PrecisionGateError(
                f"{path}: {precision} accuracy drop {drop:.4f} "
                f"({fid.accuracy_fp32:.4f} -> {fid.accuracy:.4f} "
                f"over {fid.labelled} labelled texts) is above the floor "
                f"model.max_accuracy_drop={config.max_accuracy_drop}"
            )
    elif fid.agreement is not None:
        figures += 1
        if 1.0 - fid.agreement > config.max_accuracy_drop:
            raise PrecisionGateError(
                f"{path}: {precision} top-label agreement with fp32 {fid.agreement:.4f} (over {fid.texts} "
                f"texts) lets accuracy drop by up to {1.0 - fid.agreement:.4f}, above the floor "
                f"model.max_accuracy_drop={config.max_accuracy_drop}"
            )
    if figures == 0:
        raise PrecisionGateError(f"{path}: the manifest holds no fidelity figure to check")
    return manifest


# --- building artifacts ---------------------------------------------------------------------


def source_hash(*objects: Any) -> str:
    """A hash of the code of functions/classes (their syntax tree: formatting and comments do not
    count): a changed exporter changes cache keys."""
    digest = hashlib.sha256()
    for obj in objects:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:12]


def _keep_fp32_nodes(graph_path: Path, patterns: Sequence[str]) -> list[str]:
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(p in n.name for p in patterns)]


class _Feeds:
    """ONNX Runtime CalibrationDataReader over batches of (ids, mask) feeds."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        pass


def quantize_int8(
    fp32_graph: Path,
    target: Path,
    method: QuantMethod = DEFAULT_METHOD,
    calibration: Sequence[dict[str, np.ndarray]] = (),
    keep_fp32: Sequence[str] = KEEP_FP32_PATTERNS,
) -> list[str]:
    """Writes the INT8 graph of `fp32_graph` to `target`; returns the MatMul nodes kept in fp32.

    dynamic: int8 weights per output channel, activations quantised per batch at run time
    (MatMulInteger on CPU). static: activation ranges calibrated (min-max) on the given feeds,
    QDQ format, MatMul and the embedding Gather quantised.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    excluded = _keep_fp32_nodes(fp32_graph, keep_fp32)
    if method == "dynamic":
        quantize_dynamic(
            fp32_graph, target, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=excluded
        )
    else:
        if not calibration:
            raise ValueError("static int8 quantisation needs calibration texts (--calibration)")
        reader: Any = _Feeds(calibration)
        quantize_static(
            fp32_graph,
            target,
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            nodes_to_exclude=excluded,
        )
    return excluded


def convert_fp16(fp32_graph: Path, target: Path) -> None:
    """Writes a float16 copy of the graph (inputs and outputs stay int64/float32) for CUDA."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_graph))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(target))


BUILD_SOURCE = source_hash(quantize_int8, convert_fp16, _keep_fp32_nodes)
"""Hash of the code that builds reduced graphs (part of their cache key)."""


def replace_dir(tmp: Path, target: Path) -> None:
    """Moves a fully written directory into place (readers never see half of one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def time_batches(
    runs: dict[str, Callable[[list[list[int]]], Any]],
    batches: Sequence[list[list[int]]],
    seconds_per_shape: float,
    rounds: int = 3,
) -> list[dict[str, float]]:
    """Texts per second of each named run at each batch, interleaved round by round (best round)."""
    best: list[dict[str, float]] = [dict.fromkeys(runs, 0.0) for _ in batches]
    for run in runs.values():
        run(batches[0])  # warm-up
    for _ in range(rounds):
        for index, batch in enumerate(batches):
            for name, run in runs.items():
                run(batch)
                started = time.perf_counter()
                calls = 0
                while True:
                    run(batch)
                    calls += 1
                    elapsed = time.perf_counter() - started
                    if elapsed >= seconds_per_shape / rounds:
                        break
                best[index][name] = max(best[index][name], calls * len(batch) / elapsed)
    return best


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-12))
