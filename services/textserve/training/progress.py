"""A tqdm progress bar for transformers' Trainer: steps, latest loss, examples per second.

Replaces the Trainer's own ProgressCallback / PrinterCallback (see recipe.build_trainer);
evaluation results are written above the bar as one line each.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class ProgressBar(TrainerCallback):
    """Shows optimizer steps, the latest training loss, the epoch and throughput."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._started = 0.0
        self._examples_per_step = 0
        self._loss: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._bar = tqdm(total=state.max_steps, desc="fine-tune", unit="step", dynamic_ncols=True)
        self._started = time.perf_counter()
        self._examples_per_step = args.train_batch_size * args.gradient_accumulation_steps * args.world_size

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._bar is None:
            return
        self._bar.update(state.global_step - self._bar.n)
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        postfix = {
            "loss": "-" if self._loss is None else f"{self._loss:.4f}",
            "epoch": f"{state.epoch or 0.0:.2f}",
            "ex/s": f"{state.global_step * self._examples_per_step / elapsed:.1f}",
        }
        self._bar.set_postfix(postfix, refresh=False)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs:
            return
        if "loss" in logs:
            self._loss = float(logs["loss"])
        evaluated = {k: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, float)}
        if evaluated and self._bar is not None:
            shown = ", ".join(
                f"{k[5:]}={v:.4f}" for k, v in evaluated.items() if not k.endswith("_per_second")
            )
            self._bar.write(f"dev at step {state.global_step} (epoch {state.epoch or 0.0:.2f}): {shown}")

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
