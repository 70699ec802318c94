"""Causal language models for generation: load, describe, tokenize, render chat.

`CausalLM` holds a transformers causal LM (torch; CUDA when present) and its tokenizer,
loaded from any Hugging Face model directory (or a hub id where the hub is reachable),
or, for an empty `model.path`, the tiny random demo model of `runtime.random_lm`.
It knows nothing about batching; the generation engine runs its forward passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textserve.core.config import ModelConfig
from textserve.runtime.device import intra_op_threads, resolve_torch_device, torch_dtype
from textserve.runtime.model_files import resolve_model
from textserve.runtime.random_lm import DEMO_NAME, demo_model

log = logging.getLogger(__name__)

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


@dataclass(frozen=True)
class CausalLMInfo:
    """What clients are told about a loaded causal LM."""

    name: str
    revision: str
    backend: str
    device: str
    max_context_tokens: int
    """Prompt plus generated tokens the model takes (its position limit, or model.max_length);
    the generation service serves a copy capped by its KV budget."""
    vocab_size: int
    eos_token_ids: frozenset[int]
    has_chat_template: bool
    random_demo: bool
    """True for the built-in random demo model (its output is gibberish)."""


def _context_length(hf_config: Any, configured: int) -> int:
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    limit = 0
    for key in _CONTEXT_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    limit = limit or 2048
    return min(limit, configured) if configured else limit


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids as generate() uses them: generation config, else model config, else tokenizer."""
    for value in (
        getattr(model.generation_config, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if value is None:
            continue
        ids = [value] if isinstance(value, int) else list(value)
        return frozenset(int(i) for i in ids)
    return frozenset()


class CausalLM:
    """A causal LM and its tokenizer, ready for the generation engine."""

    def __init__(self, config: ModelConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        self.config = config
        self.device = resolve_torch_device(config.device)
        torch.set_num_threads(intra_op_threads(config.intra_op_threads))
        dtype = torch_dtype(config.dtype, self.device)
        random_demo = not config.path
        if random_demo:
            model, tokenizer, revision = demo_model()
            name = config.name or DEMO_NAME
            revision = config.revision or revision
            model = model.to(dtype)
        else:
            files = resolve_model(config.path, config.name, config.revision)
            tokenizer = AutoTokenizer.from_pretrained(str(files.path))
            model = AutoModelForCausalLM.from_pretrained(str(files.path), dtype=dtype)
            name, revision = files.name, files.revision
        self.model: Any = model.to(self.device).eval()
        self.tokenizer: Any = tokenizer
        self.torch = torch
        self.info = CausalLMInfo(
            name=name,
            revision=revision,
            backend="torch",
            device=self.device,
            max_context_tokens=_context_length(self.model.config, config.max_length),
            vocab_size=int(self.model.get_output_embeddings().weight.shape[0]),
            eos_token_ids=_eos_ids(self.model, tokenizer),
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
            random_demo=random_demo,
        )
        self.load_seconds = time.perf_counter() - started

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a raw prompt (with the tokenizer's own special tokens, e.g. BOS)."""
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return [int(i) for i in ids]

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt text of a conversation, with the assistant's turn opened."""
        rendered: str = self.tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
        return rendered

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of a rendered conversation (the template already holds any BOS)."""
        ids: list[int] = self.tokenizer(self.render_chat(messages), add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]
