"""A whole Generate whose deadline passes mid-generation fails with DeadlineExceeded; a stream
keeps the tokens it delivered and ends "cancelled" (the built-in random demo model)."""

from __future__ import annotations

import time

import pytest
from textserve.core.errors import DeadlineExceeded
from textserve.generation.params import GenerateParams
from textserve.generation.scheduler import FinishStatus
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH

from tests.support import loopback_server, start_host


async def test_a_deadline_passing_mid_generation() -> None:
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig, ModelConfig
    from textserve.generation.app import GenerationApp
    from textserve.generation.config import GenerationServiceConfig

    app = GenerationApp(
        GenerationServiceConfig(
            server=loopback_server(), model=ModelConfig(path=RANDOM_MODEL_PATH, backend="torch")
        ),
        build_cache(CacheConfig(backend="none"), "generation"),
    )
    host = await start_host([app])
    try:
        service = app.service
        await service.generate(GenerateParams(prompt="warm up", max_new_tokens=4))
        long = GenerateParams(prompt="a long story", max_new_tokens=400, ignore_eos=True)
        # Long enough for the first tokens, far too short for 400 of them.
        with pytest.raises(DeadlineExceeded, match="deadline passed after"):
            await service.generate(long, deadline=time.monotonic() + 0.3)
        chunks = [c async for c in service.stream(long, deadline=time.monotonic() + 0.3)]
        assert chunks[-1].finish is FinishStatus.ABORTED  # told "cancelled", with what it got
        assert 0 < sum(len(c.token_ids) for c in chunks) < 400
    finally:
        await host.stop(grace=1.0)
