"""Generation logic: validate, tokenize (or render chat), submit to the engine, stream back.

Knows nothing of protobuf; the servicer converts in and out (generation/convert.py), and
nothing of the engine's thread: generation/async_engine.py hands each sequence's events
over to the event loop. `stream` yields text deltas as the engine produces them;
`generate` collects a whole completion and serves deterministic requests (greedy or
seeded) from the response cache (core/cache_through.py: identical ones in flight are
generated once). A caller that goes away (its task is cancelled) aborts its sequence,
which frees the sequence's batch slot and KV reservation at the engine's next step.

Options that ride on a request: `n` sequences from the one prompt (submitted together;
sequence i of a seeded request is seeded with seed + i; usage counts the prompt once),
per-token logprobs (generation/logprobs.py) and structured output (the response format is
compiled once into a grammar by generation/structured.py, off the event loop).

Model versions (lifecycle/, generation/versions.py): the service holds a VersionManager of
versions, each its own causal LM and engine (one, "1", without a model repository). Each request
is routed (a pinned version, else the weighted split sticky per routing key) for as long as it
generates, so unloading a version lets its streams finish; its result and last stream chunk
say which version served it, and the cache key holds the version. With a shadow version, a share
of finished requests is generated again on it (never delaying the client) and the exact match of
the tokens recorded (textserve_shadow_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from textserve.core import metrics
from textserve.core.cache import ResponseCache
from textserve.core.cache_through import CacheThrough
from textserve.core.errors import BackendFailure, DeadlineExceeded, InvalidInput, NotReady
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.engine import EngineRequest, SequenceEvent
from textserve.generation.logprobs import TokenLogprob
from textserve.generation.params import (
    GenerateParams,
    check_input,
    check_max_new_tokens,
    check_n,
    check_response_format,
    check_stop,
    logprobs_count,
    sampling_config,
)
from textserve.generation.scheduler import FinishStatus
from textserve.generation.structured import Grammar
from textserve.generation.versions import GenerationVersion, configured_model_name, version_config
from textserve.lifecycle.manager import VersionManager, error_code_name
from textserve.runtime.causal_lm import CausalLMFront, CausalLMInfo

SERVICE = "generation"
# Prompts longer than this (characters) are tokenized off the event loop.
_THREAD_THRESHOLD_CHARS = 4096


@dataclass
class GenerationChunk:
    """One piece of a streamed completion of sequence `index`; each sequence's last chunk
    carries its `finish`, and the very last chunk of the request (`last`) the usage."""

    text: str
    token_ids: list[int]
    finish: FinishStatus | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    """Logprobs of `token_ids` when the request asked for them."""
    last: bool = False
    version: str = ""
    """The model version generating the request."""
    info: CausalLMInfo | None = None
    """That version's model."""


@dataclass
class Choice:
    """One of the n sequences of a whole completion."""

    index: int
    text: str
    token_ids: list[int]
    finish: FinishStatus
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerateResult:
    """A whole completion (text, token_ids, finish and logprobs are the first sequence's)."""

    text: str
    token_ids: list[int]
    finish: FinishStatus
    prompt_tokens: int
    output_tokens: int
    """Generated tokens of all the sequences."""
    first_token_seconds: float = 0.0
    cached: bool = False
    logprobs: list[TokenLogprob] | None = None
    choices: list[Choice] = field(default_factory=list)
    """Every sequence in index order (one when n=1)."""
    version: str = ""
    """The model version that served the request."""
    info: CausalLMInfo | None = None
    """That version's model."""


@dataclass
class _Prepared:
    runtime: GenerationVersion
    """The version that runs the sequences."""
    prompt_ids: list[int]
    max_new_tokens: int
    requests: list[EngineRequest] = field(default_factory=list)
    """The n sequences, in index order."""
    first_token_seconds: float = 0.0
    logprobs: bool = False
    expired: bool = False
    """The deadline passed after tokens were produced (a stream ends "cancelled")."""


class GenerationService:
    """Owns the versions of the causal LM (each with its engine) and the cache use."""

    def __init__(
        self, config: GenerationServiceConfig, cache: ResponseCache | None = None, name: str = SERVICE
    ) -> None:
        """`cache` is shared by the versions (keys carry the version) and closed by `stop` only,
        so a version unloaded and loaded again finds it open."""
        self.config = config
        self.cache = cache if config.cache_enabled else None
        self.results: CacheThrough[GenerateResult] = CacheThrough(self.cache, name)
        self.name = name

        def build(version: str, folder: Path | None) -> GenerationVersion:
            own = config if folder is None else version_config(config, folder)
            return GenerationVersion(own, name, version)

        self.versions: VersionManager[GenerationVersion] = VersionManager(
            name, configured_model_name(config), config.repository, build, code_of=error_code_name
        )

    def set_code_names(self, code_of: Callable[[BaseException | None], str]) -> None:
        """How the per-version request counter names an outcome (the app passes gRPC status names);
        a stream its reader closed early is CANCELLED."""
        self.versions.code_of = lambda error: (
            "CANCELLED" if isinstance(error, GeneratorExit) else code_of(error)
        )

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model version(s) (each: the model off the event loop, then its engine thread)."""
        await self.versions.start()

    async def stop(self) -> None:
        """Stops the engines (ending what still runs) and closes the cache."""
        await self.versions.stop()
        if self.cache is not None:
            await self.cache.close()

    @property
    def ready(self) -> bool:
        """True once a model version is loaded, and while the primary's engine is alive (not
        while a new engine process replaces one that died)."""
        if not self.versions.ready:
            return False
        runtime = self.versions.primary().runtime
        return runtime is None or runtime.engine is None or runtime.engine.healthy

    @property
    def primary(self) -> GenerationVersion:
        """The version GenerationInfo describes (the largest weight); NotReady when none is ready."""
        runtime = self.versions.primary().runtime
        if runtime is None or not runtime.ready:
            raise NotReady("model is still loading")
        return runtime

    @property
    def info(self) -> CausalLMInfo:
        """The primary version's model, its max_context_tokens capped by the KV budget; NotReady
        before the model is loaded."""
        if not self.versions.ready:
            raise NotReady("model is still loading")
        return self.primary.info

    # --- the request path ----------------------------------------------------------------
    async def stream(
        self, params: GenerateParams, deadline: float | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Streams a completion from the routed version (it drains before an unload); raises
        InvalidInput, Overloaded, DeadlineExceeded, NotReady or NotFound (an unknown pinned version).
        After the last chunk, a shadow version may run the request again (`_mirror`)."""
        arrival = time.monotonic()
        if not self.versions.ready:
            raise NotReady("model is still loading")
        async with self.versions.route(params.model_version, params.routing_key) as slot:
            runtime = self._runtime(slot.runtime, slot.version)
            prepared = await self._prepare(runtime, params, deadline, arrival)
            choices = [Choice(index, "", [], FinishStatus.ABORTED) for index in range(len(prepared.requests))]
            async for chunk in self._run(prepared):
                choice = choices[chunk.index]
                choice.token_ids.extend(chunk.token_ids)
                if chunk.finish is not None:
                    choice.finish = chunk.finish
                chunk.version, chunk.info = slot.version, runtime.info
                yield chunk
        self._mirror(slot.version, params, prepared, choices)

    async def generate(self, params: GenerateParams, deadline: float | None = None) -> GenerateResult:
        """A whole completion from the routed version; deterministic requests are served from and
        written to the cache (keyed by the version). A shadow version may run it again afterwards."""
        arrival = time.monotonic()
        if not self.versions.ready:
            raise NotReady("model is still loading")
        async with self.versions.route(params.model_version, params.routing_key) as slot:
            runtime = self._runtime(slot.runtime, slot.version)
            prepared = await self._prepare(runtime, params, deadline, arrival)
            key = self._cache_key(prepared, params, slot.version)
            if key is None:
                result = await self._complete(prepared)
            else:

                async def complete(_indices: list[int]) -> list[GenerateResult]:
                    return [await self._complete(prepared)]

                # Identical deterministic requests in flight are generated once.
                (item,) = await self.results.run(
                    [key], complete, _RESULT_CODEC, deadline, model=runtime.info.name, version=slot.version
                )
                result = item.value
        result = dataclasses.replace(result, version=slot.version, info=runtime.info)
        self._mirror(slot.version, params, prepared, result.choices)
        return result

    @staticmethod
    def _runtime(runtime: GenerationVersion | None, version: str) -> GenerationVersion:
        if runtime is None or not runtime.ready:
            raise NotReady(f"model version {version} is not loaded")
        return runtime

    # --- shadow --------------------------------------------------------------------------
    def _mirror(
        self, primary: str, params: GenerateParams, prepared: _Prepared, choices: Sequence[Choice]
    ) -> None:
        """Hands the finished request to the shadow version (when one is set), which generates it
        again with its own deadline; agreement 1 when every sequence's tokens are the same, else 0.
        Sampled requests without a seed are 'skipped' (their tokens are not expected to match), as
        are primaries that did not finish (cancelled, expired).

        The shadow never competes with client calls for the cores: it starts once no client call
        is in flight and is aborted (its sequences leave the shadow's engine at its next step)
        when one arrives; such a run, or one that found no idle moment before its deadline,
        is 'skipped'."""
        finished = all(c.finish in _FINISHED for c in choices)
        deterministic = prepared.requests[0].sampling.deterministic
        expected = [list(c.token_ids) for c in choices]
        versions = self.versions

        async def rerun(runtime: GenerationVersion, deadline: float) -> float:
            again = await self._prepare(runtime, params, deadline, time.monotonic())
            result = await self._complete(again)
            return 1.0 if [c.token_ids for c in result.choices] == expected else 0.0

        async def shadow(runtime: GenerationVersion, deadline: float) -> float | None:
            try:
                await asyncio.wait_for(versions.primary_idle(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return None
            run = asyncio.ensure_future(rerun(runtime, deadline))
            arrival = asyncio.ensure_future(versions.primary_arrives())
            try:
                await asyncio.wait((run, arrival), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (arrival, run):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(arrival, run, return_exceptions=True)
            if run.cancelled():
                return None  # gave way to a client call
            return run.result()

        versions.mirror(primary, shadow, skip=not (finished and deterministic))

    async def _complete(self, prepared: _Prepared) -> GenerateResult:
        """Runs the sequences and collects their chunks into one completion."""
        choices = [
            Choice(index, "", [], FinishStatus.ABORTED, [] if prepared.logprobs else None)
            for index in range(len(prepared.requests))
        ]
        texts: list[list[str]] = [[] for _ in choices]
        last: GenerationChunk | None = None
        async for chunk in self._run(prepared):
            choice = choices[chunk.index]
            texts[chunk.index].append(chunk.text)
            choice.token_ids.extend(chunk.token_ids)
            if choice.logprobs is not None and chunk.logprobs:
                choice.logprobs.extend(chunk.logprobs)
            if chunk.finish is not None:
                choice.finish = chunk.finish
            last = chunk
        assert last is not None and last.last
        if prepared.expired:  # a whole completion past its deadline is an error, not a short answer
            raise DeadlineExceeded(
                f"deadline passed after {last.output_tokens} of {prepared.max_new_tokens} tokens; "
                "use GenerateStream to keep partial output"
            )
        for choice, parts in zip(choices, texts, strict=True):
            choice.text = "".join(parts)
        first = choices[0]
        return GenerateResult(
            text=first.text,
            token_ids=first.token_ids,
            finish=first.finish,
            prompt_tokens=last.prompt_tokens,
            output_tokens=last.output_tokens,
            first_token_seconds=prepared.first_token_seconds,
            logprobs=first.logprobs,
            choices=choices,
        )

    async def _prepare(
        self, runtime: GenerationVersion, params: GenerateParams, deadline: float | None, arrival: float
    ) -> _Prepared:
        """Checks the request and tokenizes it for `runtime`'s model; nothing is queued yet."""
        model, info, engine = runtime.model, runtime.info, runtime.engine
        if model is None or engine is None:
            raise NotReady(f"model version {runtime.version} is not loaded")
        config = self.config
        check_input(params, config)
        check_max_new_tokens(params.max_new_tokens, config)
        check_stop(params.stop, config)
        sampling = sampling_config(params)
        n = check_n(params.n, config)
        logprobs = logprobs_count(params, config)
        grammar = await self._grammar(runtime, params)
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
        prepared = _Prepared(runtime, prompt_ids, max_new, logprobs=logprobs is not None)
        for index in range(n):
            seed = sampling.seed
            own = sampling if seed is None else dataclasses.replace(sampling, seed=(seed + index) % _SEEDS)
            prepared.requests.append(
                EngineRequest(
                    seq_id=engine.next_seq_id(),
                    prompt_ids=prompt_ids,
                    max_new_tokens=max_new,
                    sampling=own,
                    stop=params.stop,
                    ignore_eos=params.ignore_eos,
                    deadline=deadline,
                    arrival=arrival,
                    grammar=grammar,
                    logprobs=logprobs,
                )
            )
        return prepared

    async def _grammar(self, runtime: GenerationVersion, params: GenerateParams) -> Grammar | None:
        """The request's structured-output grammar for the version's tokenizer (compiled off the
        event loop, or cached)."""
        response_format = params.response_format
        if response_format is None:
            return None
        check_response_format(response_format, self.config)
        grammars = runtime.grammars
        if grammars is None:
            raise InvalidInput(response_format.field, "structured output is not available for this model")
        labels = (SERVICE, runtime.info.name, response_format.kind.value)
        metrics.child(metrics.GEN_CONSTRAINED, *labels).inc()
        cached = grammars.cached(response_format)
        if cached is not None:
            return cached
        started = time.perf_counter()
        grammar = await asyncio.to_thread(grammars.compile, response_format)
        metrics.child(metrics.GEN_GRAMMAR_COMPILE, *labels).observe(time.perf_counter() - started)
        return grammar

    async def _tokenize(self, model: CausalLMFront, params: GenerateParams) -> list[int]:
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
        """Submits the sequences and yields their chunks; aborts them if the caller goes away."""
        engine = prepared.runtime.engine
        if engine is None:
            raise NotReady(f"model version {prepared.runtime.version} is not loaded")
        assert prepared.requests
        requests = prepared.requests
        interval = self.config.stream_interval_tokens
        index_of = {request.seq_id: index for index, request in enumerate(requests)}
        pending = [self._chunk(prepared, index) for index in range(len(requests))]
        produced = [0] * len(requests)
        unfinished = len(requests)
        steps = engine.generate(requests[0]) if len(requests) == 1 else engine.generate_many(requests)
        async with contextlib.aclosing(steps):
            async for batch in steps:
                for event in batch:
                    index = index_of[event.seq_id]
                    produced[index] = self._add_event(prepared, pending[index], event) or produced[index]
                    if event.finish is not None:
                        unfinished -= 1
                ready = [
                    chunk for chunk in pending if chunk.finish is not None or len(chunk.token_ids) >= interval
                ]
                if not unfinished:
                    ready[-1].last = True
                    ready[-1].prompt_tokens = len(prepared.prompt_ids)
                    ready[-1].output_tokens = sum(produced)
                for chunk in ready:
                    yield chunk
                    pending[chunk.index] = self._chunk(prepared, chunk.index)

    @staticmethod
    def _chunk(prepared: _Prepared, index: int) -> GenerationChunk:
        return GenerationChunk("", [], index=index, logprobs=[] if prepared.logprobs else None)

    def _add_event(self, prepared: _Prepared, pending: GenerationChunk, event: SequenceEvent) -> int:
        """Adds one engine event to the sequence's pending chunk; returns its tokens so far."""
        if event.error is not None:
            raise BackendFailure(event.error)
        if event.first_token_seconds is not None and pending.index == 0:
            prepared.first_token_seconds = event.first_token_seconds
        pending.text += event.text
        pending.token_ids += event.token_ids
        if pending.logprobs is not None and event.logprobs:
            token_texts = prepared.runtime.token_texts
            assert token_texts is not None
            pending.logprobs += [token_texts.entry(item) for item in event.logprobs]
        produced = event.output_tokens
        if event.finish is not None:
            if not produced and event.finish is FinishStatus.EXPIRED:
                raise DeadlineExceeded("deadline passed before the first token; not computed")
            if not produced and event.finish is FinishStatus.ABORTED:
                raise NotReady("server is shutting down")
            if event.finish is FinishStatus.EXPIRED:
                prepared.expired = True
            pending.finish = _client_status(event.finish)
        return produced

    # --- cache ---------------------------------------------------------------------------
    def _cache_key(self, prepared: _Prepared, params: GenerateParams, version: str) -> str | None:
        """Deterministic single-sequence requests without logprobs are cached (the entry holds
        one text) under the model, its revision and the version; n > 1 and logprobs always generate."""
        request = prepared.requests[0]
        if (
            self.cache is None
            or params.skip_cache
            or len(prepared.requests) > 1
            or prepared.logprobs
            or not request.sampling.deterministic
        ):
            return None
        info = prepared.runtime.info
        response_format = params.response_format
        sampling = request.sampling
        return self.cache.key(
            info.name,
            info.revision,
            version,
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
            *(() if response_format is None else (response_format.kind.value, response_format.spec)),
        )


_FINISHED = (FinishStatus.LENGTH, FinishStatus.EOS, FinishStatus.STOPPED)
"""Finishes of a sequence that ran to its end (what the cache stores and a shadow compares)."""

_SEEDS = 1 << 64
"""Seeds are taken modulo 2^64 (sequence i of a seeded request samples with seed + i)."""


def _client_status(status: FinishStatus) -> FinishStatus:
    """What the client is told: an expired sequence was cancelled."""
    return FinishStatus.ABORTED if status is FinishStatus.EXPIRED else status


class _ResultCodec:
    """Cache entries of whole completions: only finished ones are stored (and shared in flight)."""

    def encode(self, value: GenerateResult) -> bytes | None:
        if value.finish not in _FINISHED:
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
        text, finish = str(data["text"]), FinishStatus(data["finish"])
        ids = [int(i) for i in data["token_ids"]]
        return GenerateResult(
            text=text,
            token_ids=ids,
            finish=finish,
            prompt_tokens=int(data["prompt_tokens"]),
            output_tokens=int(data["output_tokens"]),
            cached=True,
            choices=[Choice(0, text, ids, finish)],
        )
    except (ValueError, KeyError, TypeError):
        return None
