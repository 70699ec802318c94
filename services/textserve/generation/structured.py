"""Structured output: grammars compiled with xgrammar, and the token masks they put on a step.

A request's `ResponseFormat` (any JSON object, JSON valid under a JSON Schema, or text
matching a regular expression) is compiled once into a `Grammar` by the service's
`GrammarCompiler` (an LRU cache of compiled grammars keyed by format, so a schema sent again
is not compiled again; a bad schema or regex is InvalidInput naming the field). Each
constrained sequence then holds its own `TokenConstraint` (an xgrammar matcher over that
grammar): at every engine step `mask_logits` fills one bitmask row per constrained sequence
and sets the logits of every token the grammar forbids to -inf, the sampler picks among
the rest, and `TokenConstraint.accept` advances the matcher with the chosen token. A
matcher that has accepted a stop token is terminated; the engine then ends the sequence.

JSON is generated compactly (no free whitespace between tokens), so a model cannot spend
its tokens on blanks and a finished value can only be followed by end-of-sequence.
"""

from __future__ import annotations

import enum
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar

from textserve.core.errors import InvalidInput


class FormatKind(enum.Enum):
    """Kinds of structured output."""

    JSON_OBJECT = "json_object"
    """Any JSON object."""
    JSON_SCHEMA = "json_schema"
    """JSON valid under a JSON Schema."""
    REGEX = "regex"
    """Text matching a regular expression (the whole output)."""


@dataclass(frozen=True)
class ResponseFormat:
    """What a request's output must be; `spec` is the schema (JSON text) or the regex."""

    kind: FormatKind
    spec: str = ""

    @property
    def field(self) -> str:
        """The request field this format came from (for error messages)."""
        if self.kind is FormatKind.JSON_OBJECT:
            return "response_format.type"
        return f"response_format.{self.kind.value}"


class Grammar:
    """A compiled grammar (immutable, shared by every sequence that uses it)."""

    def __init__(self, compiled: Any, response_format: ResponseFormat) -> None:
        self.compiled = compiled
        self.response_format = response_format

    def constraint(self) -> TokenConstraint:
        """A fresh matcher at the start of the grammar, for one sequence."""
        return TokenConstraint(xgrammar.GrammarMatcher(self.compiled))


class TokenConstraint:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Writes the tokens allowed next into row `row` of `bitmask`."""
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> None:
        """Advances past `token` (always one the mask allowed)."""
        if not self.matcher.accept_token(token):  # pragma: no cover - the mask forbids it
            raise RuntimeError(f"token {token} was sampled but the grammar does not allow it")

    @property
    def terminated(self) -> bool:
        """True once the grammar is complete and a stop token was accepted."""
        return bool(self.matcher.is_terminated())


def mask_logits(
    logits: torch.Tensor, rows: Sequence[int], constraints: Sequence[TokenConstraint]
) -> torch.Tensor:
    """A float32 copy of `logits` ([batch, vocab]) with the tokens each constrained row's grammar
    forbids set to -inf (rows[i] is constrained by constraints[i]; other rows are unchanged)."""
    scores = logits.float().clone()
    vocab = scores.shape[-1]
    bitmask = xgrammar.allocate_token_bitmask(scores.shape[0], vocab)
    for row, constraint in zip(rows, constraints, strict=True):
        constraint.fill(bitmask, row)
    if scores.device.type != "cpu":
        bitmask = bitmask.to(scores.device, non_blocking=True)
    xgrammar.apply_token_bitmask_inplace(scores, bitmask, vocab_size=vocab, indices=list(rows))
    return scores


_XGRAMMAR_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


def _reason(error: Exception) -> str:
    """xgrammar's message without its log prefix (`[12:00:00] /path/file.cc:12: `)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _XGRAMMAR_PREFIX.sub("", text)


class GrammarCompiler:
    """Compiles response formats for one tokenizer, keeping the most recent grammars (LRU)."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: frozenset[int],
        *,
        cache_size: int = 64,
        threads: int = 1,
    ) -> None:
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_token_ids) or None
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=threads, cache_enabled=False)
        self._cache: OrderedDict[ResponseFormat, Grammar] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()  # held for dictionary operations only
        self._compile_lock = threading.Lock()  # one compilation at a time
        self.compiled = 0
        """Grammars compiled so far (cache misses)."""

    def cached(self, response_format: ResponseFormat) -> Grammar | None:
        """The grammar of a format compiled lately, or None (never blocks on a compilation)."""
        with self._cache_lock:
            grammar = self._cache.get(response_format)
            if grammar is not None:
                self._cache.move_to_end(response_format)
            return grammar

    def compile(self, response_format: ResponseFormat) -> Grammar:
        """The grammar of a format (from the cache when it was compiled lately); raises
        InvalidInput naming the field when the schema or regex is not valid or not supported.
        Blocks for the compilation: call it off the event loop (or try `cached` first)."""
        grammar = self.cached(response_format)
        if grammar is not None:
            return grammar
        with self._compile_lock:
            grammar = self.cached(response_format)  # compiled by another caller meanwhile
            if grammar is not None:
                return grammar
            grammar = Grammar(self._compile(response_format), response_format)
            self.compiled += 1
        with self._cache_lock:
            self._cache[response_format] = grammar
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return grammar

    def _compile(self, response_format: ResponseFormat) -> Any:
        kind, spec = response_format.kind, response_format.spec
        try:
            if kind is FormatKind.JSON_OBJECT:
                return self._compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, strict_mode=False
                )
            if kind is FormatKind.JSON_SCHEMA:
                check_schema_text(spec, response_format.field)
                return self._compiler.compile_json_schema(spec, any_whitespace=False)
            return self._compiler.compile_regex(spec)
        except InvalidInput:
            raise
        except Exception as error:  # xgrammar reports bad schemas and regexes as RuntimeError
            what = "regular expression" if kind is FormatKind.REGEX else "JSON Schema"
            raise InvalidInput(
                response_format.field, f"is not a valid or supported {what}: {_reason(error)}"
            ) from error


def check_schema_text(spec: str, field: str) -> None:
    """The schema text is a JSON object."""
    try:
        schema = json.loads(spec)
    except ValueError as error:
        raise InvalidInput(field, f"is not valid JSON: {error}") from error
    if not isinstance(schema, dict):
        raise InvalidInput(field, f"must be a JSON object (a JSON Schema), got {type(schema).__name__}")
