"""Generation logic: validate, tokenize (or render chat), submit to the engine, stream back.

Knows nothing of protobuf; the servicer converts in and out (generation/convert.py), and
nothing of the engine's thread: generation/async_engine.py hands each sequence's events
over to the event loop. `stream` yields text deltas as the engine produces them;
`generate` collects a whole completion and serves deterministic requests (greedy or
seeded) from the response cache (core/cache_through.py: identical ones in flight are
generated once). A caller that goes away (its task is cancelled) aborts its sequence,
which frees the sequence's batch slot and KV reservation at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from textserve.core import metrics
from textserve.core.cache import ResponseCache
from textserve.core.cache_through import CacheThrough
from textserve.core.errors import BackendFailure, DeadlineExceeded, InvalidInput, NotReady
from textserve.generation.async_engine import AsyncEngine
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.engine import EngineRequest
from textserve.generation.params import (
    GenerateParams,
    check_input,
    check_max_new_tokens,
    check_stop,
    sampling_config,
)
from textserve.generation.scheduler import FinishStatus, SchedulerLimits
from textserve.runtime.causal_lm import CausalLM, CausalLMInfo

log = logging.getLogger(__name__)

SERVICE = "generation"
# Prompts longer than this (characters) are tokenized off the event loop.
_THREAD_THRESHOLD_CHARS = 4096


@dataclass
class GenerationChunk:
    """One piece of a streamed completion; the last one carries `finish` and the usage."""

    text: str
    token_ids: list[int]
    finish: FinishStatus | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0


@dataclass
class GenerateResult:
    """A whole completion."""

    text: str
    token_ids: list[int]
    finish: FinishStatus
    prompt_tokens: int
    output_tokens: int
    first_token_seconds: float = 0.0
    cached: bool = False


@dataclass
class _Prepared:
    prompt_ids: list[int]
    max_new_tokens: int
    request: EngineRequest | None = None
    first_token_seconds: float = 0.0


class GenerationService:
    """Owns the causal LM, the continuous-batching engine and the cache use."""

    def __init__(
        self, config: GenerationServiceConfig, cache: ResponseCache | None = None, name: str = SERVICE
    ) -> None:
        self.config = config
        self.cache = cache if config.cache_enabled else None
        self.results: CacheThrough[GenerateResult] = CacheThrough(self.cache, name)
        self.name = name
        self.model: CausalLM | None = None
        self.engine: AsyncEngine | None = None
        self._info: CausalLMInfo | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model off the event loop, then starts the engine thread."""
        model = await asyncio.to_thread(CausalLM, self.config.model)
        self.model = model
        info = model.info
        context = min(info.max_context_tokens, self.config.kv_budget_tokens)
        self._info = dataclasses.replace(info, max_context_tokens=context)
        limits = SchedulerLimits(
            max_running=self.config.max_running_sequences,
            max_waiting=self.config.max_waiting_sequences,
            kv_budget_tokens=self.config.kv_budget_tokens,
            max_prefill_tokens=self.config.max_prefill_tokens,
        )
        self.engine = AsyncEngine(model, limits, service=self.name)
        await self.engine.start()
        labels = {"service": self.name, "model": info.name, "version": "1"}
        metrics.MODEL_LOAD_DURATION.labels(**labels).set(model.load_seconds)
        metrics.MODEL_LOADED.labels(**labels).set(1)
        if info.random_demo:
            log.warning(
                "serving the built-in RANDOM demo model (weights drawn from a fixed seed; its output is "
                "gibberish); set generation.model.path to a Hugging Face causal LM directory for real text",
                extra={"service": self.name, "model": info.name, "revision": info.revision},
            )
        log.info(
            "model loaded",
            extra={
                "service": self.name,
                "model": info.name,
                "device": info.device,
                "max_context_tokens": context,
                "seconds": round(model.load_seconds, 3),
            },
        )

    async def stop(self) -> None:
        """Stops the engine (ending what still runs) and closes the cache."""
        if self.engine is not None:
            await self.engine.stop()
        if self.model is not None:
            metrics.MODEL_LOADED.labels(service=self.name, model=self.model.info.name, version="1").set(0)
        if self.cache is not None:
            await self.cache.close()

    @property
    def info(self) -> CausalLMInfo:
        """The served model, its max_context_tokens capped by the KV budget; NotReady before
        the model is loaded."""
        if self._info is None:
            raise NotReady("model is still loading")
        return self._info

    # --- the request path ----------------------------------------------------------------
    async def stream(
        self, params: GenerateParams, deadline: float | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Streams a completion; raises InvalidInput, Overloaded, DeadlineExceeded or NotReady."""
        arrival = time.monotonic()
        prepared = await self._prepare(params, deadline, arrival)
        async for chunk in self._run(prepared):
            yield chunk

    async def generate(self, params: GenerateParams, deadline: float | None = None) -> GenerateResult:
        """A whole completion; deterministic requests are served from and written to the cache."""
        arrival = time.monotonic()
        prepared = await self._prepare(params, deadline, arrival)
        assert prepared.request is not None
        key = self._cache_key(prepared, params)
        if key is None:
            return await self._complete(prepared)

        async def complete(_indices: list[int]) -> list[GenerateResult]:
            return [await self._complete(prepared)]

        # Identical deterministic requests in flight are generated once.
        (item,) = await self.results.run([key], complete, _RESULT_CODEC, deadline)
        return item.value

    async def _complete(self, prepared: _Prepared) -> GenerateResult:
        """Runs the sequence and collects its chunks into one completion."""
        texts: list[str] = []
        ids: list[int] = []
        last: GenerationChunk | None = None
        async for chunk in self._run(prepared):
            texts.append(chunk.text)
            ids.extend(chunk.token_ids)
            last = chunk
        assert last is not None and last.finish is not None
        return GenerateResult(
            text="".join(texts),
            token_ids=ids,
            finish=last.finish,
            prompt_tokens=last.prompt_tokens,
            output_tokens=last.output_tokens,
            first_token_seconds=prepared.first_token_seconds,
        )

    async def _prepare(self, params: GenerateParams, deadline: float | None, arrival: float) -> _Prepared:
        """Checks the request and tokenizes it; nothing is queued yet."""
        model, info = self.model, self._info
        if model is None or info is None or self.engine is None:
            raise NotReady("model is still loading")
        config = self.config
        check_input(params, config)
        check_max_new_tokens(params.max_new_tokens, config)
        check_stop(params.stop, config)
        sampling = sampling_config(params)
        if params.chat is not None and not info.has_chat_template:
            raise InvalidInput("chat", f"model {info.name!r} has no chat template; send a raw prompt instead")
        prompt_ids = await self._tokenize(model, params)
        field_name = "prompt" if params.prompt is not None else "chat"
        context = info.max_context_tokens
        if not prompt_ids:
            raise InvalidInput(field_name, "produced no tokens")
        if len(prompt_ids) >= context:
            raise InvalidInput(
                field_name,
                f"has {len(prompt_ids)} tokens; max_context_tokens={context} "
                "(prompt plus at least one new token)",
            )
        room = context - len(prompt_ids)
        if params.max_new_tokens == 0:
            max_new = min(config.max_new_tokens_default, room)
        elif params.max_new_tokens > room:
            raise InvalidInput(
                "params.max_new_tokens",
                f"is {params.max_new_tokens} but the prompt has {len(prompt_ids)} tokens, "
                f"so at most {room} fit in max_context_tokens={context}",
            )
        else:
            max_new = params.max_new_tokens
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded("deadline passed before generation started; not computed")
        prepared = _Prepared(prompt_ids, max_new)
        prepared.request = EngineRequest(
            seq_id=self.engine.next_seq_id(),
            prompt_ids=prompt_ids,
            max_new_tokens=max_new,
            sampling=sampling,
            stop=params.stop,
            ignore_eos=params.ignore_eos,
            deadline=deadline,
            arrival=arrival,
        )
        return prepared

    async def _tokenize(self, model: CausalLM, params: GenerateParams) -> list[int]:
        if params.prompt is not None:
            if len(params.prompt) > _THREAD_THRESHOLD_CHARS:
                return await asyncio.to_thread(model.encode, params.prompt)
            return model.encode(params.prompt)
        assert params.chat is not None
        try:
            return await asyncio.to_thread(model.encode_chat, params.chat)
        except Exception as exc:  # the template itself rejected the conversation
            raise InvalidInput("chat.messages", f"the model's chat template failed: {exc}") from exc

    async def _run(self, prepared: _Prepared) -> AsyncIterator[GenerationChunk]:
        """Submits the sequence and yields its chunks; aborts it if the caller goes away."""
        assert self.engine is not None and prepared.request is not None
        interval = self.config.stream_interval_tokens
        pending = GenerationChunk("", [])
        produced = 0
        async with contextlib.aclosing(self.engine.generate(prepared.request)) as steps:
            async for batch in steps:
                for event in batch:
                    if event.error is not None:
                        raise BackendFailure(event.error)
                    if event.first_token_seconds is not None:
                        prepared.first_token_seconds = event.first_token_seconds
                    pending.text += event.text
                    pending.token_ids += event.token_ids
                    produced = event.output_tokens or produced
                    if event.finish is not None:
                        if not produced and event.finish is FinishStatus.EXPIRED:
                            raise DeadlineExceeded("deadline passed before the first token; not computed")
                        if not produced and event.finish is FinishStatus.ABORTED:
                            raise NotReady("server is shutting down")
                        pending.finish = _client_status(event.finish)
                        pending.prompt_tokens = len(prepared.prompt_ids)
                        pending.output_tokens = produced
                if pending.finish is not None or len(pending.token_ids) >= interval:
                    yield pending
                    pending = GenerationChunk("", [])

    # --- cache ---------------------------------------------------------------------------
    def _cache_key(self, prepared: _Prepared, params: GenerateParams) -> str | None:
        request = prepared.request
        if self.cache is None or params.skip_cache or request is None or not request.sampling.deterministic:
            return None
        info = self.info
        sampling = request.sampling
        return self.cache.key(
            info.name,
            info.revision,
            "generate",
            json.dumps(request.prompt_ids),
            request.max_new_tokens,
            sampling.temperature,
            sampling.top_k,
            sampling.top_p,
            sampling.repetition_penalty,
            -1 if sampling.greedy or sampling.seed is None else sampling.seed,
            json.dumps(list(request.stop)),
            request.ignore_eos,
        )


def _client_status(status: FinishStatus) -> FinishStatus:
    """What the client is told: an expired sequence was cancelled."""
    return FinishStatus.ABORTED if status is FinishStatus.EXPIRED else status


class _ResultCodec:
    """Cache entries of whole completions: only finished ones are stored (and shared in flight)."""

    def encode(self, value: GenerateResult) -> bytes | None:
        if value.finish not in (FinishStatus.LENGTH, FinishStatus.EOS, FinishStatus.STOPPED):
            return None
        return _encode_result(value)

    def decode(self, entry: bytes) -> GenerateResult | None:
        return _decode_result(entry)


_RESULT_CODEC = _ResultCodec()


def _encode_result(result: GenerateResult) -> bytes:
    return json.dumps(
        {
            "text": result.text,
            "token_ids": result.token_ids,
            "finish": result.finish.value,
            "prompt_tokens": result.prompt_tokens,
            "output_tokens": result.output_tokens,
        }
    ).encode()


def _decode_result(value: bytes | None) -> GenerateResult | None:
    """A cached completion, or None when absent or unreadable."""
    if value is None:
        return None
    try:
        data = json.loads(value)
        return GenerateResult(
            text=str(data["text"]),
            token_ids=[int(i) for i in data["token_ids"]],
            finish=FinishStatus(data["finish"]),
            prompt_tokens=int(data["prompt_tokens"]),
            output_tokens=int(data["output_tokens"]),
            cached=True,
        )
    except (ValueError, KeyError, TypeError):
        return None
