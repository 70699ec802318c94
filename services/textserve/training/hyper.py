"""Fine-tuning hyper-parameters: one typed, checked record (no torch import; the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class HyperParameters:
    """What the recipe can be told; recorded in the model's metadata."""

    epochs: float = 3.0
    """Passes over the training data (the step cap max_steps wins when set)."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate, reached after the warm-up."""
    batch_size: int = 32
    """Training examples per forward pass (per device)."""
    eval_batch_size: int = 64
    """Examples per forward pass when evaluating."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step (effective batch = batch_size x this)."""
    warmup_ratio: float = 0.1
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    max_seq_length: int = 128
    """Token limit per example (longer ones are truncated)."""
    seed: int = 42
    """Seed of the head's initialisation, the data order and dropout."""
    patience: int = 2
    """Evaluations without improvement of the dev metric before training stops."""
    eval_steps: int = 0
    """Evaluate (and checkpoint) every this many optimizer steps; 0: once per epoch."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    fp16: bool = True
    """Mixed precision when CUDA is available (never on CPU)."""
    logging_steps: int = 10
    """Optimizer steps between loss reports."""
    class_weighted: bool = True
    """Sequence classification: weight each example's loss by its label's balanced weight
    (scikit-learn's n_samples / (n_labels * count)), so a small class is not ignored."""
    group_by_length: bool = True
    """Batch examples of similar length together (random mega-batches, far less padding)."""

    def check(self) -> None:
        """Raises ValueError naming the first out-of-range value."""
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_seq_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"epochs must be above 0 (got {self.epochs}) unless max_steps is set")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be above 0 (got {self.learning_rate})")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1 (got {self.patience})")

    def as_dict(self) -> dict[str, Any]:
        """The values as a JSON-ready dict."""
        return asdict(self)


def uses_fp16(hp: HyperParameters) -> bool:
    """Whether this run trains in mixed precision (asked for, and CUDA is there)."""
    import torch

    return hp.fp16 and torch.cuda.is_available()
