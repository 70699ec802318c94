"""The packaged demo causal LM: where it lives, what it is called, how it describes itself.

`textserve train-demo-lm` (training/demo_lm.py) writes a small GPT-2-shaped model and its
byte-level BPE tokenizer, trained on public-domain books, into `textserve/models/demo_lm/`
(package data), with `textserve-demo-lm.json` beside the weights: the recipe, the seed, the
corpus fingerprint, the training time and the held-out perplexity. The generation service
serves it when `generation.model.path` is empty (`make run`), and says plainly what it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_LM_NAME = "textserve-demo-lm"
"""Name the packaged demo model is served under."""
DEMO_LM_DIR = Path(__file__).resolve().parent.parent / "models" / "demo_lm"
"""Where the packaged demo model lives (package data of textserve)."""
DEMO_LM_METADATA = "textserve-demo-lm.json"
"""Metadata file of a demo model directory (recipe, corpus, perplexity)."""
RANDOM_MODEL_PATH = "builtin:random"
"""`generation.model.path` that selects the tiny random model of runtime.random_lm (tests)."""
DEMO_LM_PATH = "builtin:demo-lm"
"""`generation.model.path` that selects the packaged demo model explicitly (empty does too)."""

EOS_TOKEN = "<|endoftext|>"
"""End-of-text token: separates documents in training and ends a completion."""
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}:\n{{ message['content'] }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)
"""Chat template of the demo tokenizer: plain role markers in the corpus's play-script style
("USER:\\n...\\n\\nASSISTANT:\\n"); the model was never tuned to follow instructions, so a chat
reply is a continuation in the style of the books."""


def describe(layers: int, hidden: int, parameters: int) -> str:
    """The one-line description logged and sent with GenerationInfo."""
    return (
        f"textserve demo LM: {layers}-layer GPT-2-shaped ({hidden} wide, "
        f"{parameters / 1e6:.1f}M parameters), "
        "trained on public-domain books (Dostoevsky, Shakespeare), for demos only"
    )


def read_demo_metadata(path: Path) -> dict[str, Any] | None:
    """The demo metadata of a model directory, or None when it is not a demo model."""
    target = path / DEMO_LM_METADATA
    if not target.is_file():
        return None
    data = json.loads(target.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def demo_lm_available(path: Path = DEMO_LM_DIR) -> bool:
    """True when the demo model's files are present (config, weights, tokenizer, metadata)."""
    names = ("config.json", "model.safetensors", "tokenizer.json", DEMO_LM_METADATA)
    return all((path / name).is_file() for name in names)
