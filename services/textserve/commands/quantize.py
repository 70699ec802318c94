"""`textserve quantize <service>`: builds a reduced-precision artifact of the service's model and
measures it against fp32 in the same run; writes `manifest.json` beside the graph.

Steps: load the fp32 model as configured; build the artifact (int8: ONNX Runtime quantisation,
dynamic or static with calibration texts; fp16 on ONNX Runtime: a float16 graph; torch
fp16/bf16: cast at load, the manifest alone) in a temporary folder; load it; compare outputs
over the evaluation texts (mean and minimum cosine for embeddings; top-label agreement, and
accuracy when the file is labelled, for sequence classification); time both models at a few
batch shapes, interleaved; write the manifest, then move the folder into place in one rename.
The service serves the artifact only when the manifest passes its floors (runtime/precision.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.config import ConfigError, ModelConfig
from textserve.runtime import precision as prec

if TYPE_CHECKING:
    from textserve.runtime.encoder import EncoderModel, Task

SERVICES = ("embedding", "classifier")
SHAPES: tuple[tuple[int, int], ...] = ((1, 16), (32, 16), (32, 64), (8, 256))
"""(batch size, tokens per text) timed for both models."""
BUILT_IN_TEXTS: tuple[str, ...] = (
    "The service returns one vector per text.",
    "A quick brown fox jumps over the lazy dog.",
    "Interest rates rose by a quarter point on Tuesday.",
    "The film is a charming, funny and moving portrait of a family.",
    "I would not recommend this restaurant to anyone.",
    "Paris is the capital and most populous city of France.",
    "Please reset my password; the link in the e-mail has expired.",
    "Photosynthesis converts light energy into chemical energy.",
    "The match ended in a goalless draw after extra time.",
    "How do I cancel my subscription before the next billing date?",
    "cool ?",
    "EU rejects German call to boycott British lamb .",
)
"""Used (with a warning) when neither --eval nor --calibration is given."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `quantize`."""
    parser = subparsers.add_parser(
        "quantize",
        help="build an INT8 (or fp16/bf16) artifact of a service's model, measured against fp32",
    )
    parser.add_argument("service", choices=SERVICES, help="service whose model to convert")
    parser.add_argument("--config", help="YAML config file (else TEXTSERVE_CONFIG_FILE)")
    parser.add_argument("--precision", choices=prec.REDUCED, default="int8", help="target precision")
    parser.add_argument(
        "--method",
        choices=("dynamic", "static"),
        default=prec.DEFAULT_METHOD,
        help="int8 quantisation method",
    )
    parser.add_argument("--calibration", type=Path, help="static int8: calibration texts, one per line")
    parser.add_argument(
        "--eval",
        type=Path,
        help="evaluation texts: one per line (embeddings), or a labelled file (.jsonl/.csv/.tsv or "
        "'<label> <text>' lines) for a sequence-classification model",
    )
    parser.add_argument("--max-eval", type=int, default=2000, help="most evaluation texts used")
    parser.add_argument(
        "--out", type=Path, help="artifact folder (default: the ONNX cache folder the service reads)"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="timing budget per model, all shapes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(handler=_quantize)


def read_lines(path: Path, limit: int) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line][:limit]


def read_labelled(path: Path, limit: int) -> tuple[list[str], list[str]]:
    """(texts, labels) of a labelled file, read as the trainers read it (training/data.py)."""
    from textserve.training.data import read_text_examples

    examples = read_text_examples(path)[:limit]
    return [e.text for e in examples], [e.label for e in examples]


def _label_index(labels: Sequence[str], names: Sequence[str]) -> list[int]:
    """Labels of the file -> the model's label ids (by name, case-insensitive, or by index)."""
    lookup = {name.lower(): i for i, name in enumerate(names)}
    ids = []
    for label in labels:
        if label.lower() in lookup:
            ids.append(lookup[label.lower()])
        elif label.isdigit() and int(label) < len(names):
            ids.append(int(label))
        else:
            raise ConfigError(f"evaluation label {label!r} is not one of the model's labels {list(names)}")
    return ids


def _outputs(model: EncoderModel, ids: Sequence[list[int]], batch: int = 32) -> np.ndarray:
    rows: list[np.ndarray] = []
    for start in range(0, len(ids), batch):
        rows.extend(model.run_batch(list(ids[start : start + batch])))
    return np.stack(rows)


def _say(progress: bool) -> Callable[[str], None]:
    return (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)) if progress else (lambda _msg: None)


def build_artifact(
    config: ModelConfig,
    task: Task,
    *,
    precision: prec.Precision = "int8",
    method: prec.QuantMethod = prec.DEFAULT_METHOD,
    calibration: Sequence[str] = (),
    eval_texts: Sequence[str] = (),
    eval_labels: Sequence[str] = (),
    eval_source: str = "",
    out: Path | None = None,
    seconds: float = 6.0,
    progress: bool = False,
    shapes: Sequence[tuple[int, int]] = SHAPES,
) -> tuple[Path, prec.Manifest]:
    """Builds, measures and writes one artifact; returns its folder and manifest."""
    from textserve.runtime.encoder import EncoderModel, onnx_cache_path, plan_precision
    from textserve.tuning.measure import SyntheticTexts
    from textserve.tuning.result import hardware_description

    say = _say(progress)
    started = time.perf_counter()
    stages = 5
    say(f"[1/{stages}] loading fp32 {config.path}")
    fp32_config = config.model_copy(
        update={"precision": "fp32", "precision_artifact": None, "dtype": "float32"}
    )
    fp32 = EncoderModel(fp32_config, task)
    files, pooling = fp32.files, fp32.pooling
    plan = plan_precision(config, files, task, pooling, precision)
    assert plan.artifact is not None
    target = out or plan.artifact
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fp32_graph = onnx_cache_path(files, task, pooling, config.onnx_cache_dir)
        fp32_bytes = fp32_graph.stat().st_size if fp32_graph.is_file() else 0
        kept: list[str] = []
        calibration_ids = [e.ids for e in fp32.tokenizer.encode_many(list(calibration))]
        say(
            f"[2/{stages}] building {precision} "
            f"({plan.backend}{', ' + method if precision == 'int8' else ''})"
        )
        if plan.backend == "onnxruntime":
            if precision == "int8":
                feeds = [
                    dict(
                        zip(
                            ("input_ids", "attention_mask"),
                            fp32.pad(calibration_ids[i : i + 16]),
                            strict=True,
                        )
                    )
                    for i in range(0, len(calibration_ids), 16)
                ]
                kept = prec.quantize_int8(fp32_graph, tmp / prec.GRAPH, method, feeds)
            else:
                prec.convert_fp16(fp32_graph, tmp / prec.GRAPH)
        graph = tmp / prec.GRAPH
        size = graph.stat().st_size if graph.is_file() else 0
        say(f"[3/{stages}] loading the {precision} model")
        reduced = EncoderModel(
            config.model_copy(update={"precision": precision, "precision_artifact": tmp}),
            task,
            gate=False,
        )
        texts = list(eval_texts) or list(calibration) or list(BUILT_IN_TEXTS)
        source = eval_source or ("calibration texts" if calibration else "built-in sentences")
        if not eval_texts:
            print(
                f"warning: no --eval file: fidelity measured over {len(texts)} {source} only",
                file=sys.stderr,
            )
        say(f"[4/{stages}] comparing outputs over {len(texts)} texts")
        ids = [e.ids for e in fp32.tokenizer.encode_many(texts)]
        reference, candidate = _compare(fp32, reduced, ids, progress)
        fidelity = _fidelity(task, reference, candidate, texts, eval_labels, fp32.info.labels, source)
        say(f"[5/{stages}] timing both models at {len(shapes)} batch shapes, interleaved")
        synthetic = SyntheticTexts(fp32.tokenizer)
        timed_shapes = [(b, min(t, fp32.tokenizer.max_length)) for b, t in shapes]
        batches = [synthetic.batch(t, b) for b, t in timed_shapes]
        timed = prec.time_batches(
            {"fp32": fp32.run_batch, precision: reduced.run_batch}, batches, seconds / 2, rounds=3
        )
        points = tuple(
            prec.SpeedPoint(b, t, round(row["fp32"], 2), round(row[precision], 2))
            for (b, t), row in zip(timed_shapes, timed, strict=True)
        )
        manifest = prec.Manifest(
            precision=precision,
            method=method if precision == "int8" else f"{plan.backend} {precision}",
            model=files.name,
            revision=files.revision,
            task=task,
            pooling=pooling,
            backend=reduced.info.backend,
            device=reduced.info.device,
            hardware=hardware_description(reduced.info.device),
            artifact_key=plan.artifact.name,
            fp32_bytes=fp32_bytes,
            bytes=size,
            fidelity=fidelity,
            throughput=points,
            calibration_texts=len(calibration),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - started, 1),
            keep_fp32=tuple(kept),
        )
        manifest.save(tmp)
        prec.replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, manifest


def _compare(
    fp32: EncoderModel, reduced: EncoderModel, ids: Sequence[list[int]], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    reference: list[np.ndarray] = []
    candidate: list[np.ndarray] = []
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # little padding
    batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    for batch in tqdm(batches, desc="compare", unit="batch", disable=not progress, file=sys.stderr):
        rows = [ids[i] for i in batch]
        reference.extend(fp32.run_batch(rows))
        candidate.extend(reduced.run_batch(rows))
    back = np.argsort(order)
    return np.stack(reference)[back], np.stack(candidate)[back]


def _fidelity(
    task: Task,
    reference: np.ndarray,
    candidate: np.ndarray,
    texts: Sequence[str],
    labels: Sequence[str],
    names: Sequence[str],
    source: str,
) -> prec.Fidelity:
    if task == "embedding":
        cos = prec.cosines(reference, candidate)
        return prec.Fidelity(len(texts), source, float(cos.mean()), float(cos.min()))
    top_ref, top = reference.argmax(axis=1), candidate.argmax(axis=1)
    agreement = float((top_ref == top).mean())
    if not labels:
        return prec.Fidelity(len(texts), source, agreement=agreement)
    truth = np.asarray(_label_index(labels, names))
    return prec.Fidelity(
        len(texts),
        source,
        agreement=agreement,
        labelled=len(labels),
        accuracy_fp32=float((top_ref == truth).mean()),
        accuracy=float((top == truth).mean()),
    )


def summary(folder: Path, manifest: prec.Manifest) -> str:
    """The measured figures as a few lines and a table."""
    fid = manifest.fidelity
    lines = [
        f"{manifest.precision} artifact of {manifest.model} ({manifest.task}, {manifest.backend} on "
        f"{manifest.hardware}): {folder}",
    ]
    if manifest.bytes:
        lines.append(
            f"size: {manifest.bytes / 1e6:.1f} MB vs fp32 {manifest.fp32_bytes / 1e6:.1f} MB "
            f"({manifest.size_ratio:.1%})"
        )
    if fid.mean_cosine is not None and fid.min_cosine is not None:
        lines.append(
            f"cosine vs fp32 over {fid.texts} texts: mean {fid.mean_cosine:.4f}, min {fid.min_cosine:.4f}"
        )
    if fid.agreement is not None:
        lines.append(f"top-label agreement with fp32 over {fid.texts} texts: {fid.agreement:.4f}")
    if fid.accuracy is not None and fid.accuracy_fp32 is not None:
        lines.append(
            f"accuracy over {fid.labelled} labelled texts: fp32 {fid.accuracy_fp32:.4f}, "
            f"{manifest.precision} {fid.accuracy:.4f} (drop {fid.accuracy_drop:+.4f})"
        )
    lines.append("")
    lines.append(f"| batch | tokens | fp32 texts/s | {manifest.precision} texts/s | speed-up |")
    lines.append("|---:|---:|---:|---:|---:|")
    for p in manifest.throughput:
        lines.append(
            f"| {p.batch_size} | {p.text_tokens} | {p.fp32_texts_per_second:.1f} | "
            f"{p.texts_per_second:.1f} | {p.speedup:.2f}x |"
        )
    lines.append(f"geometric-mean speed-up: {manifest.speedup:.2f}x")
    return "\n".join(lines)


def _task(config: Any) -> Task:
    if isinstance(config, ClassifierServiceConfig) and config.kind == "sequence_classification":
        return "sequence-classification"
    return "embedding"


def _quantize(args: argparse.Namespace) -> int:
    from textserve.commands.settings_option import settings_or_report
    from textserve.training.data import DataError

    settings = settings_or_report(args.config)
    if settings is None:
        return 2
    config = settings.classifier if args.service == "classifier" else settings.embedding
    task = _task(config)
    try:
        calibration = read_lines(args.calibration, 100_000) if args.calibration else []
        if args.method == "static" and args.precision == "int8" and not calibration:
            raise ConfigError("--method static needs --calibration texts.txt (one text per line)")
        texts: list[str] = []
        labels: list[str] = []
        if args.eval and task == "sequence-classification":
            texts, labels = read_labelled(args.eval, args.max_eval)
        elif args.eval and args.eval.suffix.lower() in (".jsonl", ".ndjson", ".csv", ".tsv"):
            texts = read_labelled(args.eval, args.max_eval)[0]
        elif args.eval:
            texts = read_lines(args.eval, args.max_eval)
        folder, manifest = build_artifact(
            config.model,
            task,
            precision=args.precision,
            method=args.method,
            calibration=calibration,
            eval_texts=texts,
            eval_labels=labels,
            eval_source=str(args.eval) if args.eval else "",
            out=args.out,
            seconds=args.seconds,
            progress=not args.no_progress and not args.json,
        )
    except (ConfigError, DataError, OSError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(manifest.to_json(), indent=2))
    else:
        print(summary(folder, manifest))
        try:
            prec.check_manifest(
                folder,
                manifest.precision,
                config.model,
                model=manifest.model,
                revision=manifest.revision,
                task=task,
            )
            print(
                f"gate: passes (model.min_cosine={config.model.min_cosine}, "
                f"model.max_accuracy_drop={config.model.max_accuracy_drop})"
            )
        except prec.PrecisionGateError as exc:
            print(f"gate: the service would refuse this artifact: {exc}")
        if args.out is not None:
            print(
                f"to serve it, set {args.service}.model.precision: {args.precision} and "
                f"{args.service}.model.precision_artifact: {folder}"
            )
        else:
            print(f"to serve it, set {args.service}.model.precision: {args.precision}")
    return 0
