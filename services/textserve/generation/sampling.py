"""Next-token choice per sequence: greedy, or sampling with transformers' logits processors.

Each sequence gets its own `SequenceSampler`: a `LogitsProcessorList` built from
transformers' own classes in the order `generate()` applies them (repetition penalty,
then temperature, top-k, top-p), and a `torch.Generator` seeded from the request (or from
a fresh random seed), so a seeded request draws the same tokens whatever else shares its
batch. `sample_next` takes the logits of a whole step and returns one token per row;
greedy rows without a penalty are decided together by one argmax.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingConfig:
    """Resolved sampling parameters of one sequence (validated by the service)."""

    temperature: float = 0.0
    """0 is greedy decoding."""
    top_k: int = 0
    """0 disables top-k."""
    top_p: float = 1.0
    """1 disables nucleus sampling."""
    repetition_penalty: float = 1.0
    """1 disables the penalty."""
    seed: int | None = None
    """Seed of the sequence's generator; None draws a fresh one."""

    @property
    def greedy(self) -> bool:
        """True for greedy decoding."""
        return self.temperature == 0.0

    @property
    def deterministic(self) -> bool:
        """True when the same request always produces the same tokens (greedy or seeded)."""
        return self.greedy or self.seed is not None


class SequenceSampler:
    """Chooses the next token of one sequence."""

    def __init__(self, config: SamplingConfig, vocab_size: int, device: str) -> None:
        self.config = config
        self.processors = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        self.generator: torch.Generator | None = None
        self.seed: int | None = None
        if not config.greedy:
            if config.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(config.temperature))
            if 0 < config.top_k < vocab_size:
                self.processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(config.top_p))
            self.seed = config.seed if config.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)

    @property
    def plain_greedy(self) -> bool:
        """True when the next token is just the argmax of the raw logits."""
        return self.config.greedy and not self.processors

    @property
    def uses_history(self) -> bool:
        """True when the processors read the tokens seen so far (repetition penalty)."""
        return self.config.repetition_penalty != 1.0

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """Next token from one row of logits ([vocab]) given the tokens seen so far."""
        scores = logits.float().unsqueeze(0)
        if self.processors:
            ids: Any = (
                torch.tensor([list(history)], dtype=torch.long, device=logits.device)
                if self.uses_history
                else torch.empty((1, 0), dtype=torch.long, device=logits.device)
            )
            scores = self.processors(ids, scores)
        if self.generator is None:
            return int(scores.argmax(dim=-1).item())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


def sample_next(
    logits: torch.Tensor, samplers: Sequence[SequenceSampler], histories: Sequence[Sequence[int]]
) -> list[int]:
    """One token per row of `logits` ([batch, vocab]); row i uses samplers[i] and histories[i]."""
    tokens = [0] * len(samplers)
    greedy_rows = [row for row, sampler in enumerate(samplers) if sampler.plain_greedy]
    if greedy_rows:
        if len(greedy_rows) == len(samplers):
            chosen = logits.argmax(dim=-1).tolist()
        else:
            index = torch.tensor(greedy_rows, device=logits.device)
            chosen = logits.index_select(0, index).argmax(dim=-1).tolist()
        for row, token in zip(greedy_rows, chosen, strict=True):
            tokens[row] = int(token)
    for row, sampler in enumerate(samplers):
        if not sampler.plain_greedy:
            tokens[row] = sampler.choose(logits[row], histories[row])
    return tokens
