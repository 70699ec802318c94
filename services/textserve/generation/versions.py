"""Model versions of the generation service (lifecycle/): one version's causal LM and engine.

A version folder of the generation repository holds a Hugging Face causal LM directory
(config, weights, tokenizer). Each version gets its own `CausalLM` and `AsyncEngine` (its own
KV budget, scheduler and prefix cache, sized by the service's settings), the tokenizer's
logprob texts and structured-output compiler. The version manager starts it (load the model off
the event loop, warm and start the engine thread), warms it (one short greedy generate through
the engine, before traffic) and stops it (end what still runs, stop the thread, let go of the
model). Without a repository the one version, "1", is built from the `model` section.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from textserve.core import metrics
from textserve.core.errors import NotReady
from textserve.generation.async_engine import AsyncEngine, EngineFront
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.engine import EngineRequest
from textserve.generation.engine_process import EngineSpec, ProcessEngine, current_logging
from textserve.generation.logprobs import TokenTexts
from textserve.generation.prefix_cache import PrefixCache
from textserve.generation.sampling import SamplingConfig
from textserve.generation.scheduler import SchedulerLimits
from textserve.generation.structured import GrammarCompiler
from textserve.runtime.causal_lm import CausalLM, CausalLMFront, CausalLMInfo, load_causal_tokenizer
from textserve.runtime.demo_lm import DEMO_LM_NAME, DEMO_LM_PATH, RANDOM_MODEL_PATH
from textserve.runtime.model_files import model_name
from textserve.runtime.random_lm import DEMO_NAME

log = logging.getLogger(__name__)

WARM_PROMPT = "Hello"
"""The prompt of the warm-up generate (any text: the tokenizer gives it at least one token)."""


def configured_model_name(config: GenerationServiceConfig) -> str:
    """The model's name before it is loaded: model.name, else the built-in model's name, else the
    folder name of model.path (what CausalLM reports for the same config)."""
    model = config.model
    if model.name:
        return model.name
    if model.path == RANDOM_MODEL_PATH:
        return DEMO_NAME
    if model.path in ("", DEMO_LM_PATH):
        return DEMO_LM_NAME
    return model_name(model.path)


def version_config(config: GenerationServiceConfig, folder: Path) -> GenerationServiceConfig:
    """The service's config with the causal LM of one version folder, under the service's model name."""
    model = config.model.model_copy(update={"path": str(folder), "name": configured_model_name(config)})
    return config.model_copy(update={"model": model})


class GenerationVersion:
    """One loaded version: its causal LM, engine, logprob texts and grammar compiler."""

    def __init__(self, config: GenerationServiceConfig, service: str, version: str) -> None:
        self.config = config
        self.service = service
        self.version = version
        self.model: CausalLMFront | None = None
        """The tokenizer and description (the whole model with the engine in a thread)."""
        self.engine: EngineFront | None = None
        self.grammars: GrammarCompiler | None = None
        """Structured output's compiler (None when the model's tokenizer is not supported)."""
        self.token_texts: TokenTexts | None = None
        self._info: CausalLMInfo | None = None

    @property
    def info(self) -> CausalLMInfo:
        """The model, its max_context_tokens capped by the KV budget; NotReady before it is loaded."""
        if self._info is None:
            raise NotReady(f"model version {self.version} is still loading")
        return self._info

    @property
    def ready(self) -> bool:
        return self.engine is not None and self._info is not None

    async def start(self) -> None:
        """Loads the model and warms and starts its engine, in a process of its own
        (`engine_process`) or in a thread of this one (a model the engine cannot batch fails here)."""
        config = self.config
        limits = SchedulerLimits(
            max_running=config.max_running_sequences,
            max_waiting=config.max_waiting_sequences,
            kv_budget_tokens=config.kv_budget_tokens,
            max_prefill_tokens=config.max_prefill_tokens,
        )
        prefix_tokens = min(config.prefix_cache_tokens, config.kv_budget_tokens)
        model: CausalLMFront
        engine: EngineFront
        if config.engine_process:
            level, fmt = current_logging()
            spec = EngineSpec(
                model=config.model,
                limits=limits,
                service=self.service,
                max_batched_tokens=config.max_batched_tokens,
                prefix_cache_tokens=prefix_tokens,
                prefix_block_tokens=config.prefix_block_tokens,
                grammar_cache_size=config.grammar_cache_size,
                prefill_time_share=config.prefill_time_share,
                log_level=level,
                log_format=fmt,
            )
            process_engine = ProcessEngine(spec)
            await process_engine.start()
            try:
                tokenizer = await asyncio.to_thread(load_causal_tokenizer, config.model)
            except BaseException:
                await process_engine.stop()
                raise
            assert process_engine.info is not None
            model = CausalLMFront(config.model, tokenizer, process_engine.info, process_engine.load_seconds)
            engine = process_engine
        else:
            whole = await asyncio.to_thread(CausalLM, config.model)
            model = whole
            engine = AsyncEngine(
                whole,
                limits,
                service=self.service,
                max_batched_tokens=config.max_batched_tokens,
                prefix_cache=PrefixCache(prefix_tokens, config.prefix_block_tokens),
                prefill_time_share=config.prefill_time_share,
            )
            await engine.start()
        self.model = model
        info = model.info
        self.engine = engine
        self.token_texts = TokenTexts(model.tokenizer)
        self.grammars = await asyncio.to_thread(self._grammar_compiler, model)
        context = min(info.max_context_tokens, config.kv_budget_tokens)
        self._info = dataclasses.replace(info, max_context_tokens=context)
        labels = {"service": self.service, "model": info.name, "version": self.version}
        metrics.MODEL_LOAD_DURATION.labels(**labels).set(model.load_seconds)
        metrics.MODEL_LOADED.labels(**labels).set(1)
        self._log_loaded(model, context)

    async def warm(self) -> None:
        """One short greedy generate through the engine before the version takes traffic."""
        assert self.model is not None and self.engine is not None
        prompt = self.model.encode(WARM_PROMPT)
        request = EngineRequest(
            seq_id=self.engine.next_seq_id(),
            prompt_ids=prompt,
            max_new_tokens=2,
            sampling=SamplingConfig(),
            ignore_eos=True,
        )
        async for _ in self.engine.generate(request):
            pass

    async def stop(self) -> None:
        """Ends every sequence still running, stops the engine thread and lets go of the model."""
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.stop()
        if self.model is not None:
            labels = {"service": self.service, "model": self.model.info.name, "version": self.version}
            metrics.MODEL_LOADED.labels(**labels).set(0)
        self.model = None
        self.grammars = None
        self.token_texts = None
        self._info = None

    def _grammar_compiler(self, model: CausalLMFront) -> GrammarCompiler | None:
        info = model.info
        try:
            size = self.config.grammar_cache_size
            return GrammarCompiler(model.tokenizer, info.vocab_size, info.eos_token_ids, cache_size=size)
        except Exception:
            log.warning(
                "structured output is off: the grammar library does not support this tokenizer",
                exc_info=True,
                extra={"service": self.service, "model": info.name, "version": self.version},
            )
            return None

    def _log_loaded(self, model: CausalLMFront, context: int) -> None:
        info = model.info
        extra = {"service": self.service, "model": info.name, "revision": info.revision}
        if info.random_demo:
            log.warning(
                "serving the built-in RANDOM model (weights drawn from a fixed seed, for tests; its output "
                "is gibberish); leave generation.model.path empty for the demo LM, or set it to a Hugging "
                "Face causal LM directory",
                extra=extra,
            )
        elif info.demo_lm:
            log.warning(
                "serving the packaged DEMO model (%s); set generation.model.path to a Hugging Face causal "
                "LM directory for a real model",
                info.description,
                extra=extra,
            )
        log.info(
            "model loaded",
            extra={
                "service": self.service,
                "model": info.name,
                "version": self.version,
                "device": info.device,
                "max_context_tokens": context,
                "seconds": round(model.load_seconds, 3),
            },
        )
