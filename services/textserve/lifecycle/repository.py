"""The model repository: Triton's `<path>/<model>/<version>/` layout and the version policy.

A version folder's name is a positive integer. `scan` lists the folders present; `wanted`
applies the policy (latest N, all, specific) to them. Without a repository (`path` unset),
the one version is "1", built from the service's `model` section (`DEFAULT_VERSION`).
A new kind of version source (a list in the config, an object store) is another function
returning the same `{version: folder}` mapping.
"""

from __future__ import annotations

import re
from pathlib import Path

from textserve.core.config import VERSION_PATTERN, ModelRepositoryConfig

DEFAULT_VERSION = "1"
"""The one version of a service without a repository."""

_VERSION = re.compile(VERSION_PATTERN)


def version_key(version: str) -> int:
    """Sort key of a version name (numeric)."""
    return int(version)


def model_folder(config: ModelRepositoryConfig, model_name: str) -> Path:
    """`<path>/<model_name>` (repository.model_name wins over the service's model name)."""
    assert config.path is not None
    return config.path / (config.model_name or model_name)


def scan(folder: Path) -> dict[str, Path]:
    """Version folders present under a model folder: {"1": <folder>/1, ...} (others ignored)."""
    if not folder.is_dir():
        return {}
    found = {}
    for entry in folder.iterdir():
        if entry.is_dir() and _VERSION.match(entry.name):
            found[entry.name] = entry
    return dict(sorted(found.items(), key=lambda item: version_key(item[0])))


def wanted(available: list[str] | set[str] | dict[str, Path], config: ModelRepositoryConfig) -> list[str]:
    """The versions the policy serves out of those available, ascending."""
    versions = sorted(available, key=version_key)
    if config.version_policy == "all":
        return versions
    if config.version_policy == "specific":
        chosen = set(config.specific_versions)
        return [v for v in versions if v in chosen]
    return versions[-config.latest_n :]
