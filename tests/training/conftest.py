"""Fixtures for the fine-tuning tests: a tiny config-built BERT with the MiniLM tokenizer and
small generated data files (the shared public data comes from tests/shared_data.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

POSITIVE = ["a wonderful", "a moving", "a brilliant", "a delightful", "an excellent", "a charming"]
NEGATIVE = ["a dull", "a tedious", "an awful", "a boring", "a clumsy", "a lifeless"]
NOUNS = ["film", "story", "performance", "script", "comedy", "drama"]
PEOPLE = [["John", "Smith"], ["Maria"], ["Li", "Wei"], ["Anna", "Berg"], ["Ahmed"]]
PLACES = [["Paris"], ["New", "York"], ["Tokyo"], ["Berlin"], ["São", "Paulo"]]
ORGS = [["Reuters"], ["European", "Union"], ["Acme", "Corp"], ["UN"]]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT (seeded random weights) saved with the MiniLM tokenizer."""
    import torch
    from textserve.core.config import ModelConfig
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(ModelConfig().path)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentiment_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """(text, label) pairs, balanced, seeded."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = "positive" if i % 2 else "negative"
        adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append((f"{adjective} {rng.choice(NOUNS)} , really .", label))
    return rows


def tagged_sentences(count: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences of (word, IOB2 tag), seeded; two entities per sentence."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        person, place, org = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ORGS)
        words: list[tuple[str, str]] = []
        words += [(w, ("B-" if j == 0 else "I-") + "PER") for j, w in enumerate(person)]
        words += [("met", "O"), ("people", "O"), ("from", "O")]
        words += [(w, ("B-" if j == 0 else "I-") + "ORG") for j, w in enumerate(org)]
        words += [("in", "O")]
        words += [(w, ("B-" if j == 0 else "I-") + "LOC") for j, w in enumerate(place)]
        words += [(".", "O")]
        sentences.append(words)
    return sentences


def to_iob1(tags: list[str]) -> list[str]:
    """IOB1 form of IOB2 tags: B- only where an entity directly follows one of the same type."""
    out = []
    previous = "O"
    for tag in tags:
        if tag.startswith("B-") and previous[2:] != tag[2:]:
            out.append("I-" + tag[2:])
        else:
            out.append(tag)
        previous = tag
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], iob1: bool = True) -> Path:
    """A 4-column CoNLL file (token POS chunk NER) with -DOCSTART- lines, IOB1 when asked."""
    lines = ["-DOCSTART- -X- O O", ""]
    for i, sentence in enumerate(sentences):
        tags = [tag for _, tag in sentence]
        if iob1:
            tags = to_iob1(tags)
        lines += [f"{word} NN I-NP {tag}" for (word, _), tag in zip(sentence, tags, strict=True)]
        lines.append("")
        if i % 5 == 4:
            lines += ["-DOCSTART- -X- O O", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
