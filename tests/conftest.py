"""Shared fixtures: real gRPC servers on loopback, real models (loaded once per session)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import re

from hypothesis import settings
from textserve.transport.server import ServiceHost

from tests.support import ONNX_CACHE, embedding_config, start_host

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

# Property-based tests (hypothesis) are deterministic in the suite: the same examples every run
# (derandomize, no example database), no per-example deadline on a shared 2-core machine.
# HYPOTHESIS_PROFILE=explore draws new random examples (and more of them) for a local hunt.
settings.register_profile("textserve", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "textserve"))


# --- skips that do not hide ---------------------------------------------------------------
# Under CI=true every dependency is installed (.ci/run), so a test skipped for a missing one
# (redis-server, promtool, openssl, ../shared/data, ...) fails the run instead of passing
# quietly. Hardware is the exception: a GPU test skips for "no CUDA" on a CPU runner. Such a
# skip says so in its reason (CUDA, GPU, accelerator) or carries @pytest.mark.hardware.
HARDWARE_REASON = re.compile(r"\b(cuda|gpus?|accelerators?)\b", re.IGNORECASE)
_hidden_skips: list[str] = []


def _strict_skips() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _allowed_skip(reason: str, item: pytest.Item | None) -> bool:
    if item is not None and item.get_closest_marker("hardware") is not None:
        return True
    return HARDWARE_REASON.search(reason) is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI=true, a test skipped for anything but hardware is reported as failed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (_strict_skips() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if _allowed_skip(reason, item):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every dependency is installed: {reason}"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A whole module skipped at collection (importorskip, module-level skip) is remembered."""
    if _strict_skips() and report.skipped:
        reason = _skip_reason(report)
        if not _allowed_skip(reason, None):
            _hidden_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, modules skipped at collection fail the run (tests' skips failed already)."""
    if _hidden_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("skipped under CI=true (a dependency is missing):", red=True)
            for line in _hidden_skips:
                reporter.write_line(f"  {line}", red=True)


@pytest.fixture(scope="session")
def onnx_cache_dir() -> Path:
    """Exported graphs shared by every test (the export runs once per machine)."""
    ONNX_CACHE.mkdir(parents=True, exist_ok=True)
    return ONNX_CACHE


@pytest.fixture(scope="session")
async def embedding_host(onnx_cache_dir: Path) -> AsyncIterator[ServiceHost]:
    """An embedding service (onnxruntime, in-memory cache) on a free loopback port."""
    from textserve.embedding.app import EmbeddingApp

    config = embedding_config()
    host = await start_host([EmbeddingApp(config)])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture(scope="session")
def embedding_address(embedding_host: ServiceHost) -> str:
    """host:port of the session's embedding service."""
    return f"127.0.0.1:{embedding_host.port_of('embedding')}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the session's own on a free loopback port (no persistence).

    Shared: use a unique key prefix per test module, and never kill it (start your own
    `tests.redis_server.RedisServer` for that). Skips when redis-server is not installed.
    """
    from tests.redis_server import own_redis

    yield from own_redis()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The shuffled order's seed, also under -q (where pytest-randomly's header is hidden)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(
            f"test order: pytest-randomly seed {seed} (repeat it: make test SEED={seed})"
        )
