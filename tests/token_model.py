"""A tiny token-classification model for the entity tests: a 2-layer, 32-wide BERT with
seeded random weights (its head scaled up so that tokens get varied labels) saved with the
MiniLM tokenizer, windows of 64 tokens; and generated texts (CJK, emoji, accents, very long)."""

from __future__ import annotations

import random
from pathlib import Path

LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
WINDOW = 64
"""The model's window (tokenizer model_max_length): long texts span several."""


def build_token_model(folder: Path) -> Path:
    """Writes the model directory to `folder` and returns it."""
    import torch
    from textserve.core.config import ModelConfig
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(ModelConfig().path, model_max_length=WINDOW)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model = BertForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


_SENTENCE = (
    "John Smith works for Acme Corp in New York and met Maria at the European Union office "
    "yesterday while Reuters reported from Tokyo about the United Nations summit"
)
_WORDS = _SENTENCE.split(" ")
_ACCENTED = ["Zoë", "café", "São", "Paulo", "Ñandú", "Müller", "Ærø", "naïve", "Øresund", "Đorđe"]
_CJK = ["東京", "北京大学", "李伟", "서울", "ソニー", "株式会社"]
_EMOJI = ["😀", "🚀", "👍🏽", "🇫🇷", "❤️"]
_PUNCT = [",", ".", "-", "'s", "(", ")", "!", "?", "&", "U.S."]


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """Seeded texts: plain, accented, CJK, emoji and punctuation mixes; every 10th is long
    (several windows)."""
    rng = random.Random(seed)
    pools = [
        _WORDS,
        _WORDS + _ACCENTED,
        _WORDS + _CJK,
        _WORDS + _EMOJI,
        _WORDS + _PUNCT,
        _ACCENTED + _CJK + _EMOJI,
    ]
    texts = []
    for index in range(count):
        pool = pools[index % len(pools)]
        words = 120 + rng.randrange(200) if index % 10 == 9 else 1 + rng.randrange(24)
        parts = [rng.choice(pool) for _ in range(words)]
        joiners = [" ", " ", " ", "", "  "] if pool is not _WORDS else [" "]
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(joiners) + part
        texts.append(text)
    return texts
