"""The packaged demo LM, served the way `make run` serves it (an empty generation.model.path).

Real gRPC on loopback. Correctness is parity with transformers' own `generate()` on the
packaged directory; readability is checked on the issue's own prompt ("It was a", 40 tokens
through `textserve generate`): printable characters, and words that occur in the books the
model was trained on. The random model (`builtin:random`) stays selectable for tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch
from textserve.cli import main
from textserve.core.config import ModelConfig
from textserve.generation.config import GenerationServiceConfig
from textserve.runtime.demo_lm import (
    DEMO_LM_DIR,
    DEMO_LM_NAME,
    RANDOM_MODEL_PATH,
    demo_lm_available,
    read_demo_metadata,
)
from textserve.training.demo_lm import DemoLMRecipe
from textserve.transport.server import ServiceHost
from textserve.v1 import common_pb2, generation_pb2, generation_pb2_grpc

from tests.shared_data import SHARED_DATA
from tests.support import loopback_server, start_host

MAX_BYTES = 16 * 1024 * 1024
PROMPTS = ["It was a", "The old woman", "ROMEO:\n", "Raskolnikov"]

pytestmark = pytest.mark.skipif(
    not demo_lm_available(), reason=f"the packaged demo LM is absent from {DEMO_LM_DIR}"
)


@dataclass
class Served:
    host: ServiceHost
    address: str
    model: Any
    tokenizer: Any


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    from textserve.generation.app import GenerationApp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = GenerationServiceConfig(server=loopback_server(), cache_enabled=False)
    assert config.model.path == ""  # the default: what `make run` serves
    host = await start_host([GenerationApp(config)])
    model = AutoModelForCausalLM.from_pretrained(str(DEMO_LM_DIR), dtype=torch.float32).eval()
    yield Served(
        host,
        f"127.0.0.1:{host.port_of('generation')}",
        model,
        AutoTokenizer.from_pretrained(str(DEMO_LM_DIR)),
    )
    await host.stop(grace=1.0)


def reference(served: Served, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' generate() on this prompt alone (greedy)."""
    with torch.inference_mode():
        output = served.model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=served.tokenizer.pad_token_id,
        )
    return [int(i) for i in output[0, len(prompt_ids) :]]


def corpus_words() -> set[str]:
    folder = SHARED_DATA / "corpus"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (the public data sets live in ../shared/data)")
    words: set[str] = set()
    for path in folder.glob("*.txt"):
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", path.read_text(encoding="utf-8")))
    return words


def test_packaged_files_are_small_and_described() -> None:
    size = sum(p.stat().st_size for p in DEMO_LM_DIR.iterdir() if p.is_file())
    assert size <= MAX_BYTES, f"{size} bytes"
    metadata = read_demo_metadata(DEMO_LM_DIR)
    assert metadata is not None and metadata["heldout_perplexity"] > 1.0
    assert sorted(metadata["corpus"]["files"]) == ["crime_and_punishment_pg2554.txt", "tinyshakespeare.txt"]
    assert metadata["recipe"] == dataclasses.asdict(DemoLMRecipe())  # the shipped model is the default recipe


async def test_info_says_what_the_model_is(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        info = await generation_pb2_grpc.GenerationServiceStub(channel).GenerationInfo(
            generation_pb2.GenerationInfoRequest(), timeout=30
        )
    assert info.model.name == DEMO_LM_NAME
    assert info.model.description.startswith("textserve demo LM: 4-layer GPT-2-shaped")
    assert "public-domain books" in info.model.description and "for demos only" in info.model.description
    assert info.has_chat_template
    assert info.max_context_tokens == served.model.config.n_positions


async def test_greedy_equals_generate(served: Served) -> None:
    max_new = 16
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        results = await asyncio.gather(
            *(
                stub.Generate(
                    generation_pb2.GenerateRequest(
                        prompt=prompt, params=generation_pb2.SamplingParams(max_new_tokens=max_new)
                    ),
                    timeout=60,
                )
                for prompt in PROMPTS
            )
        )
    for prompt, result in zip(PROMPTS, results, strict=True):
        prompt_ids = served.tokenizer(prompt)["input_ids"]
        assert list(result.token_ids) == reference(served, prompt_ids, max_new), prompt
        assert result.text == served.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)


async def test_generate_command_prints_english_looking_words(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """`textserve generate "It was a" --max-new-tokens 40`, the issue's own check."""
    argv = ["generate", "It was a", "--max-new-tokens", "40", "--address", served.address]
    assert await asyncio.to_thread(main, argv) == 0
    text = capsys.readouterr().out.split("\n[finish:")[0]
    assert "\ufffd" not in text
    assert all(c.isprintable() or c in "\n\t" for c in text), repr(text)
    tokens = text.split()
    assert len(tokens) >= 15, repr(text)
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
    known = corpus_words()
    assert sum(w in known for w in words) >= 0.95 * len(words), repr(text)
    wordlike = [t for t in tokens if re.fullmatch(r"[\"'(\[]*[A-Za-z]+(['-][A-Za-z]+)*[.,;:!?\"')\]]*", t)]
    assert len(wordlike) >= 0.9 * len(tokens), repr(text)


async def test_chat_renders_the_template_and_answers(served: Served) -> None:
    messages = [("system", "You are a character in a novel."), ("user", "Where were you last night?")]
    rendered = served.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
    )
    assert rendered == (
        "SYSTEM:\nYou are a character in a novel.\n\nUSER:\nWhere were you last night?\n\nASSISTANT:\n"
    )
    chat = [common_pb2.ChatMessage(role=r, content=c) for r, c in messages]
    request = generation_pb2.GenerateRequest(
        chat=generation_pb2.ChatInput(messages=chat),
        params=generation_pb2.SamplingParams(max_new_tokens=24),
    )
    async with grpc.aio.insecure_channel(served.address) as channel:
        result = await generation_pb2_grpc.GenerationServiceStub(channel).Generate(request, timeout=60)
    prompt_ids = served.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert result.usage.input_tokens == len(prompt_ids)
    assert list(result.token_ids) == reference(served, prompt_ids, 24)
    assert result.text.strip() and all(c.isprintable() or c in "\n\t" for c in result.text)


async def test_random_model_stays_selectable() -> None:
    from textserve.runtime.causal_lm import CausalLM

    model = await asyncio.to_thread(
        CausalLM, ModelConfig(path=RANDOM_MODEL_PATH, backend="torch", device="cpu")
    )
    assert model.info.random_demo and not model.info.demo_lm
    assert model.info.name == "textserve-random-demo" and "gibberish" in model.info.description
