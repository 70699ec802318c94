"""`textserve models list|load|unload|weights` against a running embedding service with a
model repository, and `--service generation` against a generation service with one (the CLI's
calls are the ModelControl RPCs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textserve.cli import build_parser
from textserve.commands.models import parse_weights
from textserve.embedding.app import EmbeddingApp
from textserve.generation.app import GenerationApp

from tests.generation_versions_support import lm_config, make_lm_version
from tests.lifecycle_support import make_version, repository
from tests.support import embedding_config, start_host


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["models", *argv])
    code = await args.handler(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_models_command_lists_loads_weighs_and_unloads(
    tmp_path: Path, onnx_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_version(tmp_path, "1", "mean")
    make_version(tmp_path, "2", "mean")
    config = embedding_config(
        repository=repository(tmp_path, version_policy="specific", specific_versions=["1"])
    )
    host = await start_host([EmbeddingApp(config)])
    address = ("--address", f"127.0.0.1:{host.port_of('embedding')}")
    try:
        code, out, _ = await run(capsys, "list", *address, "--json")
        assert code == 0
        listed = json.loads(out)
        assert [(v["version"], v["state"]) for v in listed["versions"]] == [
            ("1", "READY"),
            ("2", "UNAVAILABLE"),
        ]

        code, out, _ = await run(capsys, "load", "2", *address)
        assert code == 0 and "version    2  READY" in out

        code, out, _ = await run(
            capsys, "weights", "1=90", "2=10", "--shadow", "2", "--shadow-share", "0.25", *address
        )
        assert code == 0 and "weights: 1=90, 2=10" in out and "shadow: version 2 at 25%" in out
        code, out, _ = await run(capsys, "weights", "1=0", "2=100", *address, "--json")
        routing = json.loads(out)  # the shadow is kept when only the weights change
        assert routing["weights"] == {"1": 0.0, "2": 100.0} and routing["shadow_version"] == "2"

        code, out, _ = await run(capsys, "unload", "1", *address, "--json")
        assert code == 0
        assert {v["version"]: v["state"] for v in json.loads(out)["versions"]} == {
            "1": "UNAVAILABLE",
            "2": "READY",
        }

        code, _, err = await run(capsys, "unload", "9", *address)
        assert code == 1 and err.startswith("error: NOT_FOUND")
    finally:
        await host.stop(grace=1.0)


async def test_models_command_on_the_generation_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_lm_version(tmp_path, "1", seed=7)
    make_lm_version(tmp_path, "2", seed=8)
    host = await start_host([GenerationApp(lm_config(tmp_path, version_policy="latest"))])
    address = ("--service", "generation", "--address", f"127.0.0.1:{host.port_of('generation')}")
    try:
        code, out, _ = await run(capsys, "list", *address, "--json")
        assert code == 0
        listed = json.loads(out)
        assert listed["service"] == "generation"
        assert [(v["version"], v["state"]) for v in listed["versions"]] == [
            ("1", "UNAVAILABLE"),
            ("2", "READY"),
        ]
        code, out, _ = await run(capsys, "load", "1", *address)
        assert code == 0 and "version    1  READY" in out
        code, out, _ = await run(capsys, "weights", "1=100", "2=0", *address, "--json")
        assert code == 0 and json.loads(out)["weights"] == {"1": 100.0, "2": 0.0}
        code, out, _ = await run(capsys, "unload", "2", *address, "--json")
        assert code == 0
        assert {v["version"]: v["state"] for v in json.loads(out)["versions"]} == {
            "1": "READY",
            "2": "UNAVAILABLE",
        }
    finally:
        await host.stop(grace=1.0)


def test_weights_are_parsed() -> None:
    assert parse_weights(["1=90", "2=10.5"]) == {"1": 90.0, "2": 10.5}
    with pytest.raises(ValueError, match="VERSION=WEIGHT"):
        parse_weights(["2:10"])
