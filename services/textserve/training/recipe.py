"""The fine-tuning recipe shared by every task: hyper-parameters and transformers' Trainer.

AdamW (torch) with a linear warm-up then linear decay, a number of epochs (or a step cap),
evaluation and a checkpoint on the dev split each epoch (or every eval_steps), early
stopping when the dev metric has not improved for `patience` evaluations (the best
checkpoint is restored at the end), seeded, gradient accumulation, fp16 only on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedModel,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainingArguments,
)

from textserve.training.hyper import HyperParameters, uses_fp16
from textserve.training.progress import ProgressBar


def training_arguments(hp: HyperParameters, scratch: Path, metric: str) -> TrainingArguments:
    """The Trainer's arguments for this recipe; checkpoints go to scratch."""
    strategy = "steps" if hp.eval_steps > 0 else "epoch"
    return TrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.eval_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        seed=hp.seed,
        train_sampling_strategy="group_by_length" if hp.group_by_length else "random",
        data_seed=hp.seed,
        fp16=uses_fp16(hp),
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=hp.eval_steps or None,
        save_steps=hp.eval_steps or 500,
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


class EncodedExamples(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Tokenized examples (dicts of id lists) for the Trainer's data loader."""

    def __init__(self, rows: Sequence[dict[str, list[int]]]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]


def argmax_logits(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Keeps only the predicted ids during evaluation (much less memory than the logits)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def build_trainer(
    model: PreTrainedModel,
    hp: HyperParameters,
    scratch: Path,
    train_set: EncodedExamples,
    dev_set: EncodedExamples,
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    compute_metrics: Callable[[EvalPrediction], dict[str, float]],
    metric: str,
    progress: bool = True,
    compute_loss: Callable[..., torch.Tensor] | None = None,
) -> Trainer:
    """A Trainer with early stopping on the dev metric and our progress bar; compute_loss
    replaces the model's own loss when given (Trainer's compute_loss_func)."""
    trainer = Trainer(
        model=model,
        args=training_arguments(hp, scratch, metric),
        train_dataset=train_set,
        eval_dataset=dev_set,
        data_collator=collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=argmax_logits,
        compute_loss_func=compute_loss,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=hp.patience)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(ProgressBar())
    return trainer


def predicted_ids(trainer: Trainer, dataset: EncodedExamples) -> tuple[np.ndarray, np.ndarray]:
    """(predicted ids, label ids) of a dataset under the trainer's (best) model, in the
    dataset's order (the Trainer's evaluation batches follow the training sampler, which may
    group by length: switched to sequential order for this call)."""
    strategy = trainer.args.train_sampling_strategy
    trainer.args.train_sampling_strategy = "sequential"
    try:
        output = trainer.predict(dataset)
    finally:
        trainer.args.train_sampling_strategy = strategy
    predictions = output.predictions
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if output.label_ids is None:
        raise ValueError("the dataset has no labels")
    label_ids = output.label_ids[0] if isinstance(output.label_ids, tuple) else output.label_ids
    return np.asarray(predictions), np.asarray(label_ids)
