"""`textserve train-demo-lm` on a slice of the public-domain corpus with a tiny recipe.

The real recipe takes minutes; here a 1-layer, 32-wide model on the first 20,000 characters
of each book trains in seconds. What is checked: the same seed gives the same losses and the
same weights, the written directory loads in transformers with its chat template, the
held-out perplexity is the exponent of the mean next-token loss (computed here one window at
a time), and an error inside the loop leaves nothing behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from textserve.cli import main
from textserve.runtime.demo_lm import DEMO_LM_METADATA
from textserve.training.demo_lm import (
    DemoLMRecipe,
    build_model,
    corpus_files,
    heldout_loss,
    read_corpus,
    train_demo_lm,
    train_tokenizer,
)
from textserve.training.output import OutputError

from tests.shared_data import SHARED_DATA

SLICE_CHARS = 20_000
TINY = DemoLMRecipe(
    vocab_size=320,
    context=32,
    layers=1,
    hidden=32,
    heads=2,
    batch_size=4,
    steps=6,
    warmup_steps=2,
    threads=1,
    max_chars_per_text=SLICE_CHARS,
)


@pytest.fixture(scope="module")
def books() -> list[Path]:
    folder = SHARED_DATA / "corpus"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (the public data sets live in ../shared/data)")
    return corpus_files(folder)


def test_same_seed_same_losses_and_weights(books: list[Path], tmp_path: Path) -> None:
    losses: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    results = {
        name: train_demo_lm(
            books,
            tmp_path / name,
            TINY if name != "c" else DemoLMRecipe(**{**TINY.__dict__, "seed": TINY.seed + 1}),
            progress=False,
            on_step=lambda step, loss, name=name: losses[name].append(loss),
        )
        for name in ("a", "b", "c")
    }
    assert len(losses["a"]) == TINY.steps and all(math.isfinite(loss) for loss in losses["a"])
    assert losses["a"] == losses["b"]
    assert results["a"].weights_sha256 == results["b"].weights_sha256
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    assert losses["c"] != losses["a"] and results["c"].weights_sha256 != results["a"].weights_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no staging folder left


def test_written_model_loads_with_its_metadata_and_chat_template(books: list[Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train_demo_lm(books, tmp_path / "lm", TINY, progress=False)
    metadata = json.loads((tmp_path / "lm" / DEMO_LM_METADATA).read_text())
    assert metadata["heldout_perplexity"] == round(result.heldout_perplexity, 3)
    assert metadata["recipe"]["seed"] == TINY.seed and metadata["recipe"]["steps"] == TINY.steps
    assert sorted(metadata["corpus"]["files"]) == sorted(p.name for p in books)
    assert metadata["description"].startswith("textserve demo LM: 1-layer GPT-2-shaped")
    assert 1.0 < result.heldout_perplexity < 2 * TINY.vocab_size  # barely trained, but a distribution
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm"))
    assert model.dtype == torch.float16 or next(model.parameters()).dtype == torch.float16
    assert len(tokenizer) == TINY.vocab_size
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == "USER:\nWho are you?\n\nASSISTANT:\n"
    text = "It was a dark night, café 🚀."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte level: anything round-trips


def test_heldout_loss_is_the_mean_over_windows(books: list[Path]) -> None:
    split = read_corpus(books, 0.05, 3000)
    tokenizer = train_tokenizer(split.train, 300)
    model = build_model(TINY, tokenizer).eval()
    ids = torch.tensor(tokenizer(split.heldout[0])["input_ids"][:100])
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, TINY.context):
            window = ids[start : start + TINY.context]
            if len(window) < 2:
                continue
            logits = model(window.unsqueeze(0)).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
            count += len(window) - 1
    loss, counted = heldout_loss(model, ids, TINY.context, batch_size=2)
    assert counted == count == len(ids) - math.ceil(len(ids) / TINY.context)
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_holdout_is_the_tail_of_each_text_cut_at_a_line_end(tmp_path: Path) -> None:
    text = "".join(f"line {i} of the book\n" for i in range(100))
    (tmp_path / "book.txt").write_text(text)
    split = read_corpus([tmp_path / "book.txt"], 0.1)
    assert split.train[0] + split.heldout[0] == text
    assert split.heldout[0].startswith("line ") and split.train[0].endswith("\n")
    assert 0.08 < len(split.heldout[0]) / len(text) < 0.12


def test_an_error_inside_the_loop_leaves_nothing(books: list[Path], tmp_path: Path) -> None:
    def interrupt(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt("stopped by the test")

    with pytest.raises(KeyboardInterrupt):
        train_demo_lm(books, tmp_path / "lm", TINY, progress=False, on_step=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_model_is_kept_without_overwrite(books: list[Path], tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        train_demo_lm(books, tmp_path / "lm", TINY, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["lm"]
    assert (tmp_path / "lm" / "keep.txt").read_text() == "mine"


def test_cli_trains_and_reports_perplexity(
    books: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--vocab-size", "320", "--context", "32", "--layers", "1", "--hidden", "32", "--heads", "2"]
    args += ["--batch-size", "4", "--steps", "4", "--warmup-steps", "2", "--threads", "1"]
    args += ["--max-chars", str(SLICE_CHARS), "--no-progress"]
    out = tmp_path / "lm"
    assert main(["train-demo-lm", "--corpus", str(SHARED_DATA / "corpus"), "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    metadata = json.loads((out / DEMO_LM_METADATA).read_text())
    assert f"held-out perplexity {metadata['heldout_perplexity']:.2f}" in printed
    assert main(["train-demo-lm", "--corpus", str(SHARED_DATA / "corpus"), "--out", str(out), *args]) == 2
    assert "nothing was written" in capsys.readouterr().err
