"""Tokenizer logic: the configured models' tokenizers, and tokenize / detokenize / count / chat.

Knows nothing of protobuf; tokenizer/convert.py converts in and out. Every request names
a model (empty: the first configured one). Texts over a cut (`max_tokens`) lose their
tail but keep a final special token such as [SEP], exactly as the model services cut
in-process (runtime/tokenization.py), so a model service that tokenizes through this one
gets the same ids as it would locally. Offsets are Unicode code point indices (Python str
indices), as the Hugging Face fast tokenizer reports them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from textserve.core.config import LimitsConfig, ModelConfig
from textserve.core.errors import InvalidInput, NotReady
from textserve.core.validation import check_texts
from textserve.runtime.model_files import resolve_model
from textserve.runtime.tokenization import TextTokenizer, kept_positions
from textserve.tokenizer.config import TokenizerServiceConfig

log = logging.getLogger(__name__)

SERVICE = "tokenizer"

# Requests with more texts than this (or more characters than _THREAD_CHARS) run off the event loop.
_THREAD_TEXTS = 32
_THREAD_CHARS = 50_000

T = TypeVar("T")


@dataclass(frozen=True)
class TokenizerInfo:
    """What clients are told about one loaded tokenizer."""

    name: str
    revision: str
    max_length: int
    vocab_size: int
    has_chat_template: bool


@dataclass(frozen=True)
class TokenizeParams:
    """One Tokenize call."""

    texts: Sequence[str]
    model: str = ""
    add_special_tokens: bool = False
    return_tokens: bool = False
    return_offsets: bool = False
    max_tokens: int = 0


@dataclass(frozen=True)
class TokenizedText:
    """Tokenization of one text; tokens and offsets are empty unless asked for."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    truncated: bool
    untruncated_tokens: int


@dataclass(frozen=True)
class TokenizeResult:
    """Tokenize's answer."""

    model: TokenizerInfo
    encodings: list[TokenizedText]


@dataclass(frozen=True)
class DetokenizeParams:
    """One Detokenize call."""

    sequences: Sequence[Sequence[int]]
    model: str = ""
    skip_special_tokens: bool = False


@dataclass(frozen=True)
class DetokenizeResult:
    """Detokenize's answer."""

    model: TokenizerInfo
    texts: list[str]


@dataclass(frozen=True)
class CountParams:
    """One CountTokens call."""

    texts: Sequence[str]
    model: str = ""
    add_special_tokens: bool = False


@dataclass(frozen=True)
class CountResult:
    """CountTokens' answer."""

    model: TokenizerInfo
    counts: list[int]


@dataclass(frozen=True)
class ChatTurn:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatParams:
    """One ApplyChatTemplate call."""

    messages: Sequence[ChatTurn]
    model: str = ""
    add_generation_prompt: bool = False


@dataclass(frozen=True)
class ChatResult:
    """ApplyChatTemplate's answer."""

    model: TokenizerInfo
    prompt: str
    ids: list[int]


class LoadedTokenizer:
    """One model's tokenizer with the operations of the service (synchronous)."""

    def __init__(self, config: ModelConfig) -> None:
        files = resolve_model(config.path, config.name, config.revision)
        self.text_tokenizer = TextTokenizer(files, config.max_length)
        self.hf: Any = self.text_tokenizer.hf
        self.special_ids = self.text_tokenizer.special_ids
        self.special_count = int(self.hf.num_special_tokens_to_add(pair=False))
        template = getattr(self.hf, "chat_template", None)
        self.info = TokenizerInfo(
            name=files.name,
            revision=files.revision,
            max_length=self.text_tokenizer.max_length,
            vocab_size=len(self.hf),
            has_chat_template=bool(template),
        )

    def tokenize(self, params: TokenizeParams) -> list[TokenizedText]:
        """Ids (and tokens and offsets when asked) of every text, cut at max_tokens."""
        batch = self.text_tokenizer.full_batch(params.texts, params.add_special_tokens)
        results: list[TokenizedText] = []
        for index, ids in enumerate(batch["input_ids"]):
            full = len(ids)
            ends_special = self.text_tokenizer.ends_with_special(ids, params.add_special_tokens)
            kept = kept_positions(full, params.max_tokens, ends_special)
            encoding = batch.encodings[index] if (params.return_tokens or params.return_offsets) else None
            tokens: list[str] = []
            offsets: list[tuple[int, int]] = []
            if encoding is not None and params.return_tokens:
                tokens = [encoding.tokens[i] for i in kept]
            if encoding is not None and params.return_offsets:
                offsets = [(int(encoding.offsets[i][0]), int(encoding.offsets[i][1])) for i in kept]
            results.append(
                TokenizedText([int(ids[i]) for i in kept], tokens, offsets, len(kept) < full, full)
            )
        return results

    def count(self, texts: Sequence[str], add_special_tokens: bool) -> list[int]:
        """Tokens per text."""
        batch = self.text_tokenizer.full_batch(texts, add_special_tokens)
        return [len(ids) for ids in batch["input_ids"]]

    def detokenize(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        """Text of every id list."""
        return [
            str(text)
            for text in self.hf.batch_decode(
                [list(ids) for ids in sequences], skip_special_tokens=skip_special_tokens
            )
        ]

    def chat(self, messages: Sequence[ChatTurn], add_generation_prompt: bool) -> tuple[str, list[int]]:
        """The rendered prompt and its ids (the template writes any special tokens itself)."""
        from jinja2.exceptions import TemplateError

        conversation = [{"role": turn.role, "content": turn.content} for turn in messages]
        try:
            prompt = self.hf.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as exc:
            raise InvalidInput(
                "messages", f"the chat template of {self.info.name!r} rejected them: {exc}"
            ) from exc
        ids = self.hf(str(prompt), add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return str(prompt), [int(i) for i in ids]


class TokenizerService:
    """Holds the configured tokenizers; the first is the default."""

    def __init__(self, config: TokenizerServiceConfig) -> None:
        self.config = config
        self._models: dict[str, LoadedTokenizer] = {}
        self._default: LoadedTokenizer | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads every configured tokenizer off the event loop; model names must be unique."""
        # One at a time: transformers' lazy imports are not thread-safe on first use.
        loaded = [await asyncio.to_thread(LoadedTokenizer, model) for model in self.config.models]
        models: dict[str, LoadedTokenizer] = {}
        for index, item in enumerate(loaded):
            if item.info.name in models:
                raise ValueError(
                    f"tokenizer.models[{index}] is named {item.info.name!r} like an earlier model; "
                    "set tokenizer.models[].name to tell them apart"
                )
            models[item.info.name] = item
        self._models = models
        self._default = loaded[0]
        log.info("tokenizers loaded", extra={"service": SERVICE, "models": list(models)})

    async def stop(self) -> None:
        """Nothing to release (tokenizers hold no connections)."""
        return None

    @property
    def models(self) -> list[TokenizerInfo]:
        """Loaded tokenizers, the default first."""
        if self._default is None:
            raise NotReady("tokenizers are still loading")
        return [item.info for item in self._models.values()]

    def _get(self, model: str) -> LoadedTokenizer:
        if self._default is None:
            raise NotReady("tokenizers are still loading")
        if not model:
            return self._default
        found = self._models.get(model)
        if found is None:
            raise InvalidInput("model", f"unknown model {model!r}; this service has {sorted(self._models)}")
        return found

    @property
    def limits(self) -> LimitsConfig:
        """Request limits."""
        return self.config.limits

    # --- the request path ----------------------------------------------------------------
    async def tokenize(self, params: TokenizeParams) -> TokenizeResult:
        """Token ids, and tokens and offsets when asked, of every text."""
        tokenizer = self._get(params.model)
        check_texts(params.texts, self.limits)
        if params.add_special_tokens and 0 < params.max_tokens < tokenizer.special_count:
            raise InvalidInput(
                "max_tokens",
                f"is {params.max_tokens}; must be 0 (no cut) or at least {tokenizer.special_count}, "
                f"the special tokens {tokenizer.info.name!r} adds",
            )
        encodings = await _run(lambda: tokenizer.tokenize(params), params.texts)
        return TokenizeResult(tokenizer.info, encodings)

    async def count_tokens(self, params: CountParams) -> CountResult:
        """Tokens per text."""
        tokenizer = self._get(params.model)
        check_texts(params.texts, self.limits)
        counts = await _run(lambda: tokenizer.count(params.texts, params.add_special_tokens), params.texts)
        return CountResult(tokenizer.info, counts)

    async def detokenize(self, params: DetokenizeParams) -> DetokenizeResult:
        """Text of every id list; ids must be in the model's vocabulary."""
        tokenizer = self._get(params.model)
        limits = self.limits
        if not params.sequences:
            raise InvalidInput("sequences", "must contain at least one id list")
        if len(params.sequences) > limits.max_texts_per_request:
            raise InvalidInput(
                "sequences",
                f"has {len(params.sequences)} id lists; max_texts_per_request={limits.max_texts_per_request}",
            )
        vocab = tokenizer.info.vocab_size
        for index, ids in enumerate(params.sequences):
            if len(ids) > limits.max_text_chars:
                raise InvalidInput(
                    f"sequences[{index}].ids",
                    f"has {len(ids)} ids; at most max_text_chars={limits.max_text_chars} ids per list",
                )
            for position, token_id in enumerate(ids):
                if token_id >= vocab:
                    raise InvalidInput(
                        f"sequences[{index}].ids[{position}]",
                        f"id {token_id} is out of range; vocab_size={vocab} for {tokenizer.info.name!r}",
                    )
        total = sum(len(ids) for ids in params.sequences)
        texts = await _run(
            lambda: tokenizer.detokenize(params.sequences, params.skip_special_tokens),
            params.sequences,
            size=total,
        )
        return DetokenizeResult(tokenizer.info, texts)

    async def apply_chat_template(self, params: ChatParams) -> ChatResult:
        """The model's chat template applied to the messages, and the prompt's ids."""
        tokenizer = self._get(params.model)
        if not tokenizer.info.has_chat_template:
            raise InvalidInput(
                "model", f"{tokenizer.info.name!r} has no chat template; choose a model that has one"
            )
        limits = self.limits
        if not params.messages:
            raise InvalidInput("messages", "must contain at least one message")
        if len(params.messages) > limits.max_texts_per_request:
            raise InvalidInput(
                "messages",
                f"has {len(params.messages)} messages; max_texts_per_request={limits.max_texts_per_request}",
            )
        for index, turn in enumerate(params.messages):
            if not turn.role.strip():
                raise InvalidInput(f"messages[{index}].role", "must not be empty")
            if len(turn.content) > limits.max_text_chars:
                raise InvalidInput(
                    f"messages[{index}].content",
                    f"has {len(turn.content)} characters; max_text_chars={limits.max_text_chars}",
                )
        size = sum(len(turn.content) for turn in params.messages)
        prompt, ids = await _run(
            lambda: tokenizer.chat(params.messages, params.add_generation_prompt), params.messages, size=size
        )
        return ChatResult(tokenizer.info, prompt, ids)


async def _run(work: Callable[[], T], items: Sequence[Any], size: int | None = None) -> T:
    """Runs small jobs inline and large ones in a worker thread (the event loop stays free)."""
    chars = size if size is not None else sum(len(item) for item in items)
    if len(items) > _THREAD_TEXTS or chars > _THREAD_CHARS:
        return await asyncio.to_thread(work)
    return work()
