"""Causal language models for generation: load, describe, tokenize, render chat.

`CausalLM` holds a transformers causal LM (torch; CUDA when present) and its tokenizer,
loaded from any Hugging Face model directory (or a hub id where the hub is reachable).
Two built-in models need no files of the user's: an empty `model.path` (or
`builtin:demo-lm`) is the packaged demo LM trained on public-domain books
(`runtime.demo_lm`), and `builtin:random` the tiny random model of `runtime.random_lm`
that tests and benchmarks use. It knows nothing about batching; the generation engine runs
its forward passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textserve.core.config import ModelConfig
from textserve.runtime.demo_lm import (
    DEMO_LM_DIR,
    DEMO_LM_NAME,
    DEMO_LM_PATH,
    RANDOM_MODEL_PATH,
    demo_lm_available,
    describe,
    read_demo_metadata,
)
from textserve.runtime.device import intra_op_threads, resolve_torch_device, torch_dtype
from textserve.runtime.model_files import resolve_model
from textserve.runtime.random_lm import DEMO_NAME, byte_level_tokenizer, demo_model

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
    """True for the built-in random model (its output is gibberish)."""
    description: str = ""
    """What the model is, in a sentence (the built-in models say so; empty otherwise)."""
    demo_lm: bool = False
    """True for the packaged demo LM (trained on public-domain books; for demos only)."""


RANDOM_DESCRIPTION = (
    "textserve random model: GPT-2-shaped with weights drawn from a fixed seed, for tests only; "
    "its output is gibberish"
)
"""Description of the built-in random model."""


def demo_lm_files() -> Any:
    """The packaged demo LM's files; FileNotFoundError (saying how to make them) when absent."""
    if not demo_lm_available(DEMO_LM_DIR):
        raise FileNotFoundError(
            f"the packaged demo LM is missing from {DEMO_LM_DIR}; run `textserve train-demo-lm` "
            "or set generation.model.path to a Hugging Face causal LM directory"
        )
    return resolve_model(str(DEMO_LM_DIR), DEMO_LM_NAME)


def demo_description(hf_config: Any, metadata: dict[str, Any] | None, parameters: int) -> str:
    """The demo LM's description from its config, with the held-out perplexity its metadata
    records."""
    text = describe(int(hf_config.n_layer), int(hf_config.n_embd), parameters)
    if metadata and "heldout_perplexity" in metadata:
        text += f"; held-out perplexity {metadata['heldout_perplexity']}"
    return text


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


class CausalLMFront:
    """A causal LM's tokenizer and description without its weights: what the request path
    needs (tokenize prompts, render chats) when the model runs in another process
    (generation/engine_process.py); `CausalLM` is the whole model."""

    def __init__(self, config: ModelConfig, tokenizer: Any, info: CausalLMInfo, load_seconds: float) -> None:
        self.config = config
        self.tokenizer: Any = tokenizer
        self.info = info
        self.load_seconds = load_seconds

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


def _is_demo_lm(config: ModelConfig) -> bool:
    return config.path in ("", DEMO_LM_PATH)


def _model_files(config: ModelConfig) -> Any:
    """The files of the causal LM `config` names (the packaged demo LM, or a model directory)."""
    if _is_demo_lm(config):
        return demo_lm_files()
    return resolve_model(config.path, config.name, config.revision)


def load_causal_tokenizer(config: ModelConfig) -> Any:
    """The tokenizer of the causal LM `config` names, without loading its weights."""
    from transformers import AutoTokenizer

    if config.path == RANDOM_MODEL_PATH:
        return byte_level_tokenizer()
    return AutoTokenizer.from_pretrained(str(_model_files(config).path))


class CausalLM(CausalLMFront):
    """A causal LM and its tokenizer, ready for the generation engine."""

    def __init__(self, config: ModelConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        self.device = resolve_torch_device(config.device)
        torch.set_num_threads(intra_op_threads(config.intra_op_threads))
        dtype = torch_dtype(config.dtype, self.device)
        random_demo = config.path == RANDOM_MODEL_PATH
        demo_lm = _is_demo_lm(config)
        description = ""
        if random_demo:
            model, tokenizer, revision = demo_model()
            name = config.name or DEMO_NAME
            revision = config.revision or revision
            model = model.to(dtype)
            description = RANDOM_DESCRIPTION
        else:
            files = _model_files(config)
            tokenizer = AutoTokenizer.from_pretrained(str(files.path))
            model = AutoModelForCausalLM.from_pretrained(str(files.path), dtype=dtype)
            name = config.name or files.name
            revision = config.revision or files.revision
            if demo_lm:
                parameters = sum(p.numel() for p in model.parameters())
                description = demo_description(model.config, read_demo_metadata(files.path), parameters)
        self.model: Any = model.to(self.device).eval()
        self.torch = torch
        info = CausalLMInfo(
            name=name,
            revision=revision,
            backend="torch",
            device=self.device,
            max_context_tokens=_context_length(self.model.config, config.max_length),
            vocab_size=int(self.model.get_output_embeddings().weight.shape[0]),
            eos_token_ids=_eos_ids(self.model, tokenizer),
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
            random_demo=random_demo,
            description=description,
            demo_lm=demo_lm,
        )
        super().__init__(config, tokenizer, info, time.perf_counter() - started)
