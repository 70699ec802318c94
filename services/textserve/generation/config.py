"""The generation service's settings (the `generation` section of the configuration)."""

from __future__ import annotations

from pydantic import Field, model_validator

from textserve.core.config import (
    LimitsConfig,
    ModelConfig,
    ModelRepositoryConfig,
    ServerConfig,
    ServiceConfigBase,
)


class GenerationServiceConfig(ServiceConfigBase):
    """Generation service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50054))
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(path="", backend="torch"))
    """Causal LM directory; an empty path (or `builtin:demo-lm`) serves the packaged demo LM (a
    small GPT-2-shaped model trained on public-domain books, for demos only), and
    `builtin:random` a tiny random model (tests and benchmarks; gibberish)."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    max_new_tokens_default: int = Field(default=64, ge=1, le=1_000_000)
    """max_new_tokens when a request leaves it 0."""
    max_new_tokens_limit: int = Field(default=1024, ge=1, le=1_000_000)
    """Largest max_new_tokens a request may ask for."""
    max_running_sequences: int = Field(default=32, ge=1, le=4096)
    """Most sequences decoded together."""
    max_waiting_sequences: int = Field(default=1024, ge=1, le=1_000_000)
    """Most sequences waiting for admission; more are rejected with RESOURCE_EXHAUSTED."""
    kv_budget_tokens: int = Field(default=65536, ge=16, le=100_000_000)
    """KV cache budget in padded tokens: running sequences x the longest (prompt + max_new_tokens)."""
    max_prefill_tokens: int = Field(default=4096, ge=16, le=10_000_000)
    """Most padded prompt tokens (new sequences x longest prompt) prefilled in one step."""
    max_batched_tokens: int = Field(default=128, ge=16, le=10_000_000)
    """Most tokens one engine step computes: one per running sequence plus prompt tokens of
    new ones; longer or more prompts are prefilled in chunks over several steps (chunked prefill).
    Small on CPU, where a prefill step of 128 tokens already costs a few decode steps; raise it
    on a GPU (vLLM uses 2048 and more)."""
    prefill_time_share: float = Field(default=1.0, gt=0.0, le=100.0)
    """While streams run, a step computes only the prompt tokens that take about this share of a
    decode step (both timed by the engine as it runs): a running stream's inter-token gap grows
    at most (1 + share)x while new prompts join; smaller favours running streams, larger new
    prompts' time to first token."""
    prefix_cache_tokens: int = Field(default=16384, ge=0, le=100_000_000)
    """Most KV tokens kept for reuse by prompts that share a prefix (0: off); counted in
    kv_budget_tokens and evicted (least recently used first) when sequences need the room."""
    prefix_block_tokens: int = Field(default=16, ge=1, le=4096)
    """Tokens per prefix-cache block: prefixes are reused in whole blocks."""
    stream_interval_tokens: int = Field(default=1, ge=1, le=1024)
    """Tokens per streamed message."""
    max_stop_sequences: int = Field(default=16, ge=0, le=1024)
    """Most stop sequences in one request."""
    max_stop_chars: int = Field(default=256, ge=1, le=100_000)
    """Most characters in one stop sequence."""
    max_n: int = Field(default=16, ge=1, le=1024)
    """Most sequences one request may ask for (`n`)."""
    max_top_logprobs: int = Field(default=20, ge=0, le=1000)
    """Most alternatives per position a request may ask for (`top_logprobs`)."""
    max_response_format_chars: int = Field(default=65536, ge=1, le=10_000_000)
    """Most characters in a structured-output JSON Schema or regex."""
    grammar_cache_size: int = Field(default=64, ge=1, le=100_000)
    """Compiled structured-output grammars kept (LRU); a format sent again is not recompiled."""
    engine_process: bool = True
    """Run each model version's engine in a process of its own (the weights live there; the
    server keeps the tokenizer), so the server's gRPC work never holds the interpreter lock the
    engine needs between its tensor operations (generation/engine_process.py). False runs it
    in a thread of the server (tests that look inside the engine; one process to debug)."""
    repository: ModelRepositoryConfig = Field(default_factory=ModelRepositoryConfig)
    """Model versions side by side (lifecycle/): repository layout, version policy, traffic split,
    shadow. A version folder holds a Hugging Face causal LM directory (config, weights, tokenizer);
    each version gets its own engine (KV budget, scheduler, prefix cache) with the settings above."""

    def queue_bound(self) -> int:
        """Sequences waiting or running (the admission bound's default derives from it)."""
        return self.max_waiting_sequences + self.max_running_sequences

    @model_validator(mode="after")
    def _check_limits(self) -> GenerationServiceConfig:
        if self.max_new_tokens_default > self.max_new_tokens_limit:
            raise ValueError(
                f"generation.max_new_tokens_default={self.max_new_tokens_default} exceeds "
                f"generation.max_new_tokens_limit={self.max_new_tokens_limit}"
            )
        return self
