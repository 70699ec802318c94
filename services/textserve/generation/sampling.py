"""Next-token choice per sequence: greedy, or sampling with transformers' logits processors.

Each sequence gets its own `SequenceSampler`: a `LogitsProcessorList` built from
transformers' own classes in the order `generate()` applies them (repetition penalty,
then temperature, top-k, top-p), and a `torch.Generator` seeded from the request (or from
a fresh random seed), so a seeded request draws the same tokens whatever else shares its
batch. `sample_step` takes the logits of a whole step and returns one token per row;
greedy rows without a penalty are decided together by one argmax.

Two per-sequence options ride on the sampler:
- a grammar constraint (generation/structured.py): before anything else, the tokens the
  grammar forbids are masked out of the constrained rows (one bitmask for the step, filled
  for those rows only), and the chosen token advances the row's matcher;
- logprobs: the chosen token's log-probability and the `top_logprobs` most likely tokens,
  from log_softmax of the model's raw logits (before temperature, penalties or the mask),
  computed in one call for the rows that ask.

`n` sequences of one request are separate samplers: sequence i of a seeded request is
seeded with `seed + i` (mod 2^64) by the service, so each is reproducible on its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from textserve.generation.structured import Grammar, TokenConstraint, mask_logits


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


@dataclass(frozen=True)
class TokenLogprobs:
    """The log-probability of one chosen token and the most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    """(token id, logprob) of the most likely tokens, most likely first."""


@dataclass
class StepSample:
    """What `sample_step` chose for each row of a step."""

    tokens: list[int]
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    """Per row: the chosen token's logprobs, or None where the row did not ask."""


class SequenceSampler:
    """Chooses the next token of one sequence."""

    def __init__(
        self,
        config: SamplingConfig,
        vocab_size: int,
        device: str,
        *,
        grammar: Grammar | None = None,
        logprobs: int | None = None,
    ) -> None:
        self.config = config
        self.constraint: TokenConstraint | None = grammar.constraint() if grammar is not None else None
        self.logprobs = logprobs
        """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely tokens."""
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
    def constraint_done(self) -> bool:
        """True once the grammar of a constrained sequence is complete (it must end now)."""
        return self.constraint is not None and self.constraint.terminated

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
    return sample_step(logits, samplers, histories).tokens


def sample_step(
    logits: torch.Tensor, samplers: Sequence[SequenceSampler], histories: Sequence[Sequence[int]]
) -> StepSample:
    """One token per row of `logits` ([batch, vocab]) under each row's grammar (if any), the
    constraints advanced, and the logprobs of the rows that ask for them."""
    constrained = [row for row, sampler in enumerate(samplers) if sampler.constraint is not None]
    scores = logits
    if constrained:
        scores = mask_logits(logits, constrained, [samplers[row].constraint for row in constrained])  # type: ignore[misc]
    tokens = _choose(scores, samplers, histories)
    for row in constrained:
        constraint = samplers[row].constraint
        assert constraint is not None
        constraint.accept(tokens[row])
    return StepSample(tokens, _logprobs(logits, samplers, tokens))


def _logprobs(
    logits: torch.Tensor, samplers: Sequence[SequenceSampler], tokens: list[int]
) -> list[TokenLogprobs | None]:
    """log_softmax of the raw logits of the rows that ask: the chosen token and the top k."""
    result: list[TokenLogprobs | None] = [None] * len(samplers)
    rows = [row for row, sampler in enumerate(samplers) if sampler.logprobs is not None]
    if not rows:
        return result
    index = torch.tensor(rows, device=logits.device)
    logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
    chosen_ids = torch.tensor([tokens[row] for row in rows], device=logits.device)
    chosen = logprobs.gather(1, chosen_ids.unsqueeze(1)).squeeze(1).tolist()
    k = max(samplers[row].logprobs or 0 for row in rows)
    top_values: list[list[float]] = [[] for _ in rows]
    top_ids: list[list[int]] = [[] for _ in rows]
    if k:
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        top_values, top_ids = top.values.tolist(), top.indices.tolist()
    for i, row in enumerate(rows):
        wanted = samplers[row].logprobs or 0
        pairs = tuple(zip(top_ids[i][:wanted], top_values[i][:wanted], strict=True))
        result[row] = TokenLogprobs(tokens[row], float(chosen[i]), pairs)
    return result


def _choose(
    logits: torch.Tensor, samplers: Sequence[SequenceSampler], histories: Sequence[Sequence[int]]
) -> list[int]:
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
