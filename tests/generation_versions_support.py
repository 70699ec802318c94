"""Helpers of the generation model-version tests: tiny random GPT-2-shaped causal LMs saved as
version folders of a Triton-style repository (differently seeded: other tokens for the same
prompt; same seed: the same model), a corrupt one, and the service config over them."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

from textserve.core.config import ModelConfig
from textserve.generation.config import GenerationServiceConfig

from tests.lifecycle_support import repository
from tests.support import loopback_server

LM = "tiny-lm"
"""The model's name (its folder under the repository)."""
CONTEXT = 128


@functools.cache
def _tokenizer() -> Any:
    from textserve.runtime.random_lm import byte_level_tokenizer

    return byte_level_tokenizer(chat_template=None)


def make_lm_version(root: Path, version: str, seed: int) -> Path:
    """`<root>/tiny-lm/<version>/`: a 2-layer GPT-2 of random weights drawn from `seed`."""
    from textserve.runtime.random_lm import save_random_model
    from transformers import GPT2Config

    tokenizer = _tokenizer()
    eos = int(tokenizer.eos_token_id)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=CONTEXT,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=0.2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return save_random_model(root / LM / version, config, tokenizer, seed=seed)


def make_corrupt_lm_version(root: Path, version: str, source: Path) -> Path:
    """A version folder with `source`'s config and tokenizer and a garbage weights file."""
    target = root / LM / version
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_file() and entry.name != "model.safetensors":
            shutil.copy(entry, target / entry.name)
    (target / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    return target


def lm_config(root: Path, **overrides: Any) -> GenerationServiceConfig:
    """The generation service over the repository at `root` (policy all, `overrides` on it)."""
    return GenerationServiceConfig(
        server=loopback_server(),
        model=ModelConfig(name=LM, backend="torch", device="cpu"),
        max_new_tokens_default=8,
        max_running_sequences=16,
        max_batched_tokens=64,
        repository=repository(root, **overrides),
    )
