"""One fine-tuning run: read and check the data, train, evaluate on dev, write the model once.

Order matters for "nothing written on error": every data file is read and checked and the
destination is checked before any folder is made; training then runs in a staging folder
that only a successful end renames to the destination (output.py).
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from textserve.runtime.model_files import ModelFiles, resolve_model
from textserve.training import sequence, tokens
from textserve.training.conll import TaggedSentence, read_tagged_sentences
from textserve.training.data import TextExample, file_sha256, read_text_examples
from textserve.training.hyper import HyperParameters, uses_fp16
from textserve.training.metrics import classification_metrics, entity_metrics
from textserve.training.output import StagedDirectory, check_destination, write_metadata
from textserve.training.recipe import build_trainer, predicted_ids

log = logging.getLogger(__name__)

Task = Literal["sequence-classification", "token-classification"]
TASKS: tuple[Task, ...] = ("sequence-classification", "token-classification")
METADATA_VERSION = 1


@dataclass(frozen=True)
class FineTuneRequest:
    """What to fine-tune, on what, and where to write it."""

    task: Task
    data: Path
    out: Path
    dev: Path | None = None
    """Dev split file; None: hold out dev_fraction of the training data (seeded)."""
    dev_fraction: float = 0.1
    model: str = ""
    """Model directory or hub id to start from; "" : the served embedding model (ModelConfig)."""
    label_map: Mapping[str, str] = field(default_factory=dict)
    """Renames labels as read (sequence classification), e.g. {"0": "negative"}."""
    hyper: HyperParameters = field(default_factory=HyperParameters)
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class FineTuneResult:
    """The written directory, its metadata, and the dev predictions (label names)."""

    out: Path
    metadata: dict[str, Any]
    dev_predictions: list[Any]
    """Sequence classification: one label per dev example; tokens: one tag list per sentence."""


def default_model() -> str:
    """The served embedding model's path (the default ModelConfig's)."""
    from textserve.core.config import ModelConfig

    return ModelConfig().path


def _file_record(path: Path, count: int) -> dict[str, Any]:
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "examples": count}


def _hold_out_sequence(
    examples: list[TextExample], fraction: float, seed: int
) -> tuple[list[TextExample], list[TextExample]]:
    from sklearn.model_selection import train_test_split

    labels = [example.label for example in examples]
    counts = {label: labels.count(label) for label in set(labels)}
    stratify = labels if min(counts.values()) >= 2 else None
    train, dev = train_test_split(examples, test_size=fraction, random_state=seed, stratify=stratify)
    return list(train), list(dev)


def _hold_out_sentences(
    sentences: list[TaggedSentence], fraction: float, seed: int
) -> tuple[list[TaggedSentence], list[TaggedSentence]]:
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(sentences) * fraction))
    dev_ids = set(order[:held])
    return (
        [s for i, s in enumerate(sentences) if i not in dev_ids],
        [s for i, s in enumerate(sentences) if i in dev_ids],
    )


def fine_tune(request: FineTuneRequest) -> FineTuneResult:
    """Runs the recipe for request.task; raises DataError / OutputError / ValueError before
    writing anything when the input is unusable."""
    if request.task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)} (got {request.task!r})")
    hp = request.hyper
    hp.check()
    if request.dev is None and not 0.0 < request.dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be between 0 and 1 (got {request.dev_fraction})")
    files = resolve_model(request.model or default_model())
    if request.task == "sequence-classification":
        return _fine_tune_sequence(request, hp, files)
    return _fine_tune_tokens(request, hp, files)


def _dev_record(request: FineTuneRequest, count: int, seed: int) -> dict[str, Any]:
    if request.dev is not None:
        return _file_record(request.dev, count)
    return {
        "path": None,
        "held_out": f"{request.dev_fraction:g} of the training file (seed {seed})",
        "examples": count,
    }


def _fine_tune_sequence(request: FineTuneRequest, hp: HyperParameters, files: ModelFiles) -> FineTuneResult:
    examples = read_text_examples(request.data, request.label_map)
    if request.dev is not None:
        train, dev = examples, read_text_examples(request.dev, request.label_map)
    else:
        train, dev = _hold_out_sequence(examples, request.dev_fraction, hp.seed)
    labels = sequence.label_names(train, dev)
    log.info("sequence classification: %d train, %d dev examples, labels %s", len(train), len(dev), labels)

    def evaluate(predicted: np.ndarray, actual: np.ndarray) -> tuple[dict[str, Any], list[Any]]:
        metrics = classification_metrics(actual.tolist(), predicted.tolist(), labels)
        return metrics, [labels[i] for i in predicted.tolist()]

    weights = sequence.balanced_weights(train, labels) if hp.class_weighted else None
    return _train_and_write(
        request,
        hp,
        files,
        labels,
        train,
        dev,
        len(examples),
        sequence,
        evaluate,
        weights,
    )


def _fine_tune_tokens(request: FineTuneRequest, hp: HyperParameters, files: ModelFiles) -> FineTuneResult:
    sentences = read_tagged_sentences(request.data)
    if request.dev is not None:
        train, dev = sentences, read_tagged_sentences(request.dev)
    else:
        train, dev = _hold_out_sentences(sentences, request.dev_fraction, hp.seed)
    tags = tokens.tag_names(train, dev)
    log.info("token classification: %d train, %d dev sentences, tags %s", len(train), len(dev), tags)

    def evaluate(predicted: np.ndarray, label_ids: np.ndarray) -> tuple[dict[str, Any], list[Any]]:
        gold, guessed = tokens.word_tags(predicted, label_ids, tags)
        return entity_metrics(gold, guessed), guessed

    return _train_and_write(request, hp, files, tags, train, dev, len(sentences), tokens, evaluate)


def _train_and_write(
    request: FineTuneRequest,
    hp: HyperParameters,
    files: ModelFiles,
    labels: Sequence[str],
    train: Sequence[Any],
    dev: Sequence[Any],
    data_count: int,
    kit: ModuleType,
    evaluate: Callable[[np.ndarray, np.ndarray], tuple[dict[str, Any], list[Any]]],
    class_weights: Sequence[float] | None = None,
) -> FineTuneResult:
    """The shared part: kit is the task module (sequence or tokens: encode, load_model,
    collator, trainer_metrics, BEST_METRIC); evaluate turns dev predictions into metrics;
    class_weights (sequence classification) weight the loss per label."""
    check_destination(request.out, request.overwrite)
    from transformers import AutoTokenizer, set_seed

    set_seed(hp.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(files.path))
    train_set = kit.encode(tokenizer, train, labels, hp.max_seq_length)
    dev_set = kit.encode(tokenizer, dev, labels, hp.max_seq_length)
    model = kit.load_model(str(files.path), labels)
    with StagedDirectory(request.out, request.overwrite) as staged:
        trainer = build_trainer(
            model,
            hp,
            staged.scratch_dir,
            train_set,
            dev_set,
            kit.collator(tokenizer),
            kit.trainer_metrics(labels),
            kit.BEST_METRIC,
            request.progress,
            None if class_weights is None else sequence.weighted_loss(class_weights),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        metrics, predictions = evaluate(*predicted_ids(trainer, dev_set))
        trainer.save_model(str(staged.model_dir))
        # The Trainer pickles its arguments beside the weights; a served directory needs no pickle.
        (staged.model_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(staged.model_dir))
        metadata = _metadata(
            request,
            hp,
            files,
            labels,
            metrics,
            seconds,
            trainer,
            _file_record(request.data, data_count),
            _dev_record(request, len(dev), hp.seed),
        )
        if class_weights is not None:
            metadata["hyperparameters"]["class_weights"] = dict(zip(labels, class_weights, strict=True))
        write_metadata(staged.model_dir, metadata)
        out = staged.commit()
    return FineTuneResult(out, metadata, predictions)


def _metadata(
    request: FineTuneRequest,
    hp: HyperParameters,
    files: ModelFiles,
    labels: Sequence[str],
    metrics: dict[str, Any],
    seconds: float,
    trainer: Any,
    train_record: dict[str, Any],
    dev_record: dict[str, Any],
) -> dict[str, Any]:
    import torch
    import transformers

    state = trainer.state
    return {
        "format_version": METADATA_VERSION,
        "task": request.task,
        "labels": list(labels),
        "base_model": {"path": str(files.path), "name": files.name, "revision": files.revision},
        "data": {"train": train_record, "dev": dev_record},
        "metrics": {"split": "dev", **metrics},
        "hyperparameters": {
            **hp.as_dict(),
            "label_map": dict(request.label_map),
            "fp16_used": uses_fp16(hp),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
        "training": {
            "seconds": round(seconds, 3),
            "optimizer_steps": int(state.global_step),
            "epochs": float(state.epoch or 0.0),
            "best_dev_metric": state.best_metric,
            "stopped_early": bool(
                hp.max_steps <= 0 and state.epoch is not None and state.epoch < hp.epochs - 1e-6
            ),
        },
        "training_seconds": round(seconds, 3),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "library_versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
