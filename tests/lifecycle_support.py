"""Helpers of the model-lifecycle tests: version folders of the MiniLM (files linked, not
copied; a CLS-pooled variant is a different model for the same inputs), repository configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import grpc
from textserve.core.config import ModelRepositoryConfig, default_model_path
from textserve.v1 import models_pb2, models_pb2_grpc

MODEL = "all-MiniLM-L6-v2"


def make_version(root: Path, version: str, pooling: str = "mean", model: str = MODEL) -> Path:
    """`<root>/<model>/<version>/`: the MiniLM's files linked in; pooling "cls" writes its own
    1_Pooling/config.json (CLS pooling: other vectors from the same weights)."""
    source = Path(default_model_path())
    target = root / model / version
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_file():
            (target / entry.name).symlink_to(entry)
    pooling_dir = target / "1_Pooling"
    pooling_dir.mkdir()
    config = json.loads((source / "1_Pooling" / "config.json").read_text())
    if pooling == "cls":
        config["pooling_mode_cls_token"] = True
        config["pooling_mode_mean_tokens"] = False
    (pooling_dir / "config.json").write_text(json.dumps(config))
    return target


def make_corrupt_version(root: Path, version: str, model: str = MODEL) -> Path:
    """A version folder whose weights file is garbage (config and tokenizer intact)."""
    source = Path(default_model_path())
    target = root / model / version
    target.mkdir(parents=True)
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copy(source / name, target / name)
    (target / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    return target


def repository(path: Path, **overrides: Any) -> ModelRepositoryConfig:
    values: dict[str, Any] = {"path": path, "version_policy": "all"}
    values.update(overrides)
    return ModelRepositoryConfig(**values)


async def list_versions(channel: grpc.aio.Channel, **kwargs: Any) -> models_pb2.ListVersionsResponse:
    stub = models_pb2_grpc.ModelControlStub(channel)
    return await stub.ListVersions(models_pb2.ListVersionsRequest(), timeout=30, **kwargs)


def states(listing: models_pb2.ListVersionsResponse) -> dict[str, str]:
    """{version: "READY", ...} of a ListVersions answer."""
    return {
        v.version: models_pb2.VersionState.Name(v.state).removeprefix("VERSION_STATE_")
        for v in listing.versions
    }
