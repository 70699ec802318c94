"""Tiny randomly initialised causal LMs, built offline and deterministically.

Nothing may be downloaded at run time, and no pretrained causal LM ships with the
package, so the generation service's demo model (an empty `model.path`), its tests and
its benchmark use a model built here from a config with a fixed seed. It produces
gibberish: it exists to exercise serving (batching, streaming, limits), not prose.

The tokenizer is GPT-2 style (byte-level BPE, so any text round-trips) with merges learnt
from a short built-in corpus, which is deterministic; it carries a ChatML chat template.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

DEMO_SEED = 1234
"""Seed of the demo model's weights."""
DEMO_NAME = "textserve-random-demo"
"""Name the demo model is served under."""
EOS_TOKEN = "<|endoftext|>"
"""End-of-sequence token of the built-in tokenizer."""
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
"""ChatML turn markers of the built-in tokenizer."""
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Chat template of the built-in tokenizer."""

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A model server answers requests from many clients at once. "
    "Tokens are generated one at a time, and every new token attends to all the tokens before it. "
    "Continuous batching lets new requests join the running batch between two decode steps. "
    "Kubernetes schedules pods onto nodes; each service runs in its own container and exposes a port. "
    "Hello world! How are you today? I am fine, thank you. What is the weather like in the city? "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: (a, b); [c] {d} - e_f / g: h? i! "
    "Unicode text: café, naïve, Zürich, 東京, Привет, emoji 🚀✨. "
    "def main():\n    print('hello')\n    return 0\n"
)


def byte_level_tokenizer(vocab_size: int = 512, chat_template: str | None = CHATML_TEMPLATE) -> Any:
    """A deterministic GPT-2-style byte-level BPE tokenizer (transformers fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS_TOKEN, *CHAT_TOKENS]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([_CORPUS] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    tokenizer.model_max_length = 1_000_000
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def random_causal_lm(config: Any, seed: int) -> Any:
    """A causal LM with weights drawn from `seed` (the global torch RNG is left untouched)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def demo_config(
    tokenizer: Any, layers: int = 4, hidden: int = 256, heads: int = 4, context: int = 1024
) -> Any:
    """GPT-2-shaped config sized for `tokenizer` (the demo and benchmark model)."""
    from transformers import GPT2Config

    eos = int(tokenizer.eos_token_id)
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        initializer_range=0.2,  # wider than GPT-2's 0.02, so the random model does not repeat one token
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def build_random_model(
    config: Any, tokenizer: Any, seed: int, eos_token_ids: list[int] | None = None
) -> tuple[Any, Any, str]:
    """Model, tokenizer and a revision string hashed from weights, tokenizer and seed."""
    model = random_causal_lm(config, seed)
    if eos_token_ids:
        model.generation_config.eos_token_id = eos_token_ids
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return model, tokenizer, f"random-{seed}-{digest.hexdigest()[:12]}"


def demo_model() -> tuple[Any, Any, str]:
    """The demo model: GPT-2 shaped (4 layers, 256 wide), byte-level tokenizer, seed DEMO_SEED."""
    tokenizer = byte_level_tokenizer()
    eos_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in (EOS_TOKEN, CHAT_TOKENS[1])]
    return build_random_model(demo_config(tokenizer), tokenizer, DEMO_SEED, eos_ids)


def save_random_model(path: Path, config: Any, tokenizer: Any, seed: int) -> Path:
    """Writes a random model and its tokenizer as a Hugging Face model directory."""
    model, tokenizer, _ = build_random_model(config, tokenizer, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
