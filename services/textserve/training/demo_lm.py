"""Training the demo causal LM from plain-text books (`textserve train-demo-lm`).

One job: from a few public-domain texts, learn a byte-level BPE tokenizer (the tokenizers
library) and a small GPT-2-shaped causal LM (transformers, built from a config), seeded and
reproducible, on CPU. The tail of every text is held out; the held-out perplexity is
measured at the end and written with the recipe into `textserve-demo-lm.json`. Everything
is staged beside the destination and renamed into place at the end (training/output.py),
so an error or an interrupt leaves no half-written model directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from textserve.runtime.demo_lm import CHAT_TEMPLATE, DEMO_LM_METADATA, EOS_TOKEN, describe
from textserve.training.output import StagedDirectory, terminate_as_interrupt


@dataclass(frozen=True)
class DemoLMRecipe:
    """Everything that decides the trained model (with the corpus)."""

    vocab_size: int = 4096
    """BPE vocabulary, the 256 byte symbols and the end-of-text token included."""
    context: int = 256
    """Tokens per training window, and the model's position limit (prompt plus completion)."""
    layers: int = 4
    hidden: int = 192
    heads: int = 3
    batch_size: int = 8
    """Windows per optimizer step."""
    steps: int = 1200
    """Optimizer steps."""
    learning_rate: float = 2e-3
    """Peak AdamW rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 60
    weight_decay: float = 0.1
    dropout: float = 0.0
    holdout_fraction: float = 0.05
    """Share of every text (its tail, cut at a line end) held out for perplexity."""
    seed: int = 1234
    threads: int = 2
    """torch intra-op threads (results are reproducible for one thread count)."""
    bf16_autocast: bool = True
    """Run forward and backward under CPU bfloat16 autocast (weights and optimizer stay float32)."""
    max_chars_per_text: int = 0
    """Read at most this many characters of each text (0: all; tests use a slice)."""


@dataclass(frozen=True)
class CorpusSplit:
    """The training and held-out parts of each text."""

    names: list[str]
    train: list[str]
    heldout: list[str]
    sha256: dict[str, str]


@dataclass(frozen=True)
class DemoLMResult:
    """What one training run produced."""

    out: Path
    heldout_perplexity: float
    heldout_loss: float
    heldout_tokens: int
    bits_per_byte: float
    final_train_loss: float
    train_seconds: float
    tokens_seen: int
    parameters: int
    weights_sha256: str


def read_corpus(paths: Sequence[Path], holdout_fraction: float, max_chars: int = 0) -> CorpusSplit:
    """Reads each text (UTF-8, line ends normalised) and cuts its tail off at a line end."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1); got {holdout_fraction}")
    names, train, heldout, digests = [], [], [], {}
    for path in sorted(paths):
        raw = path.read_bytes()
        text = raw.decode("utf-8").replace("\r\n", "\n").lstrip("\ufeff")
        if max_chars:
            text = text[:max_chars]
        cut = int(len(text) * (1.0 - holdout_fraction))
        line_end = text.rfind("\n", 0, cut)
        cut = line_end + 1 if line_end > 0 else cut
        names.append(path.name)
        train.append(text[:cut])
        heldout.append(text[cut:])
        digests[path.name] = hashlib.sha256(raw).hexdigest()
    if not names:
        raise ValueError("no corpus files")
    return CorpusSplit(names, train, heldout, digests)


def corpus_files(corpus: Path) -> list[Path]:
    """The .txt files of a corpus folder (or the one file given)."""
    if corpus.is_file():
        return [corpus]
    files = sorted(corpus.glob("*.txt"))
    if not files:
        raise ValueError(f"{corpus}: no .txt files")
    return files


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE tokenizer learnt from `texts`, with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    tokenizer.model_max_length = 1_000_000
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def token_stream(tokenizer: Any, texts: Sequence[str]) -> Any:
    """All texts as one int64 tensor of ids, each text followed by the end-of-text token."""
    import torch

    eos = int(tokenizer.eos_token_id)
    ids: list[int] = []
    for text in texts:
        if text:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def build_model(recipe: DemoLMRecipe, tokenizer: Any) -> Any:
    """A fresh GPT-2-shaped causal LM drawn from the recipe's seed."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    eos = int(tokenizer.eos_token_id)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.context,
        n_embd=recipe.hidden,
        n_layer=recipe.layers,
        n_head=recipe.heads,
        resid_pdrop=recipe.dropout,
        embd_pdrop=recipe.dropout,
        attn_pdrop=recipe.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(recipe.seed)
    return AutoModelForCausalLM.from_config(config)


def learning_rate(recipe: DemoLMRecipe, step: int) -> float:
    """Linear warm-up to the peak, then cosine decay to a tenth of it."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    span = max(recipe.steps - recipe.warmup_steps, 1)
    progress = min((step - recipe.warmup_steps) / span, 1.0)
    return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def heldout_loss(model: Any, ids: Any, context: int, batch_size: int) -> tuple[float, int]:
    """Mean next-token loss over non-overlapping windows of the held-out ids, and the count
    of predicted tokens."""
    import torch

    windows = [ids[start : start + context] for start in range(0, max(len(ids) - 1, 0), context)]
    windows = [w for w in windows if len(w) > 1]
    full = [w for w in windows if len(w) == context]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w.unsqueeze(0) for w in windows if len(w) < context]
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            logits = model(batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
                )
            )
            count += targets.numel()
    model.train()
    if count == 0:
        raise ValueError("the held-out split has no tokens; raise holdout_fraction or the corpus size")
    return total / count, count


def weights_digest(model: Any) -> str:
    """sha256 of the state dict (names and float32 values), for reproducibility checks."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


StepHook = Callable[[int, float], None]
"""Called after every optimizer step with the step number and its loss (tests use it)."""


def train_demo_lm(
    corpus: Sequence[Path],
    out: Path,
    recipe: DemoLMRecipe = DemoLMRecipe(),
    overwrite: bool = False,
    progress: bool = True,
    on_step: StepHook | None = None,
) -> DemoLMResult:
    """Trains tokenizer and model, measures held-out perplexity, writes `out` all at once
    (torch's thread count is the recipe's meanwhile, and restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return _train(corpus, out, recipe, overwrite, progress, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(
    corpus: Sequence[Path],
    out: Path,
    recipe: DemoLMRecipe,
    overwrite: bool,
    progress: bool,
    on_step: StepHook | None,
) -> DemoLMResult:
    import torch

    started = time.perf_counter()
    split = read_corpus(corpus, recipe.holdout_fraction, recipe.max_chars_per_text)
    with terminate_as_interrupt(), StagedDirectory(out, overwrite) as staged:
        tokenizer = train_tokenizer(split.train, recipe.vocab_size)
        train_ids = token_stream(tokenizer, split.train)
        heldout_ids = token_stream(tokenizer, split.heldout)
        if len(train_ids) <= recipe.context + 1:
            raise ValueError(f"the training split has {len(train_ids)} tokens; need more than context+1")
        model = build_model(recipe, tokenizer)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": recipe.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=recipe.learning_rate,
            betas=(0.9, 0.95),
        )
        sampler = torch.Generator().manual_seed(recipe.seed)
        offsets = torch.arange(recipe.context + 1)
        tokens_per_step = recipe.batch_size * recipe.context
        bar = tqdm(
            total=recipe.steps, desc="train-demo-lm", unit="step", dynamic_ncols=True, disable=not progress
        )
        loop_started = time.perf_counter()
        smoothed = float("nan")
        loss_value = float("nan")
        for step in range(recipe.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, step)
            starts = torch.randint(
                0, len(train_ids) - recipe.context - 1, (recipe.batch_size,), generator=sampler
            )
            batch = train_ids[starts.unsqueeze(1) + offsets]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
                loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_value = float(loss.detach())
            smoothed = loss_value if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss_value
            if on_step is not None:
                on_step(step, loss_value)
            elapsed = max(time.perf_counter() - loop_started, 1e-9)
            bar.update(1)
            bar.set_postfix(
                {"loss": f"{smoothed:.3f}", "tok/s": f"{(step + 1) * tokens_per_step / elapsed:,.0f}"},
                refresh=False,
            )
        bar.close()
        loss_mean, counted = heldout_loss(model, heldout_ids, recipe.context, recipe.batch_size)
        heldout_bytes = sum(len(text.encode("utf-8")) for text in split.heldout)
        train_seconds = time.perf_counter() - started
        parameters = sum(p.numel() for p in model.parameters())
        digest = weights_digest(model)
        model.generation_config.eos_token_id = int(tokenizer.eos_token_id)
        model.generation_config.pad_token_id = int(tokenizer.eos_token_id)
        model.half().save_pretrained(str(staged.model_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(staged.model_dir))
        result = DemoLMResult(
            out=out,
            heldout_perplexity=math.exp(loss_mean),
            heldout_loss=loss_mean,
            heldout_tokens=counted,
            bits_per_byte=loss_mean * counted / math.log(2) / max(heldout_bytes, 1),
            final_train_loss=smoothed,
            train_seconds=train_seconds,
            tokens_seen=recipe.steps * tokens_per_step,
            parameters=parameters,
            weights_sha256=digest,
        )
        write_metadata_file(staged.model_dir, recipe, split, result)
        staged.commit()
    return result


def write_metadata_file(
    directory: Path, recipe: DemoLMRecipe, split: CorpusSplit, result: DemoLMResult
) -> None:
    """Writes `textserve-demo-lm.json`: description, recipe, corpus, figures."""
    metadata = {
        "description": describe(recipe.layers, recipe.hidden, result.parameters),
        "architecture": "gpt2",
        "recipe": dataclasses.asdict(recipe),
        "corpus": {
            "files": split.names,
            "sha256": split.sha256,
            "heldout": "tail of each text, cut at a line end",
        },
        "heldout_perplexity": round(result.heldout_perplexity, 3),
        "heldout_loss": round(result.heldout_loss, 5),
        "heldout_tokens": result.heldout_tokens,
        "heldout_bits_per_byte": round(result.bits_per_byte, 4),
        "final_train_loss": round(result.final_train_loss, 5),
        "train_seconds": round(result.train_seconds, 1),
        "tokens_seen": result.tokens_seen,
        "parameters": result.parameters,
        "weights_sha256_fp32": result.weights_sha256,
        "weights_dtype": "float16",
    }
    target = directory / DEMO_LM_METADATA
    target.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
