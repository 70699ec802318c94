"""A real `textserve serve` process whose app fails in `start()` exits 1 with the reason.

The tokenizer's `start()` refuses two models with the same name (a configuration error only
found once the tokenizers are loaded, after the gRPC server is bound). Alone and beside the
gateway (the `serve ... gateway` path), the process logs the error, stops what it started,
and exits non-zero, instead of staying up NOT_SERVING with "Task exception was never retrieved".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.procs import ServeProcess
from tests.support import free_port


def _settings(gateway_port: int) -> dict[str, Any]:
    return {
        "log": {"level": "INFO", "format": "text"},
        "metrics": {"enabled": False},
        "tokenizer": {
            "server": {"host": "127.0.0.1", "port": free_port()},
            # Two models, both named after the default model's folder: start() refuses them.
            "models": [{}, {}],
        },
        "gateway": {
            "host": "127.0.0.1",
            "port": gateway_port,
            "embedding_address": "",
            "generation_address": "",
            "grace_period_s": 1,
        },
    }


@pytest.mark.parametrize("services", [["tokenizer"], ["tokenizer", "gateway"]], ids=["grpc", "with-gateway"])
def test_failed_start_exits_non_zero_with_the_reason(tmp_path: Path, services: list[str]) -> None:
    process = ServeProcess(tmp_path, services, _settings(free_port()))
    process.start()
    try:
        code = process.wait(timeout=120)
    finally:
        process.kill()
    logs = process.logs()
    assert code == 1, logs
    assert "is named" in logs and "like an earlier model" in logs, logs  # the app's own message
    assert "textserve serve: tokenizer failed to start: ValueError" in logs, logs
    assert "Task exception was never retrieved" not in logs, logs
    if "gateway" in services:
        # The gateway that did start was stopped, not abandoned.
        assert "gateway" in logs and "stopped" in logs, logs
