"""Which version serves a request: a pin, else a weighted split sticky per routing key.

The routing key is hashed (BLAKE2b, 8 bytes) to a point in [0, 1) and the point is mapped onto
the cumulative weights of the versions in ascending order, so a key lands on the same version as
long as the weights stand, and a share w of the keys lands on a version of weight w. Without a
key the point is random. Weights are relative; versions not serving are left out and the rest
renormalised; with no positive weight among the serving versions, the newest one takes all.
`RoutingTable` is what the `weights`/`shadow_*` settings, the SetRouting RPC and the routing file
set; `read_routing_file` reads the file form.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textserve.core.config import ModelRepositoryConfig
from textserve.lifecycle.repository import version_key

_SCALE = float(1 << 64)


@dataclass(frozen=True)
class RoutingTable:
    """Weights by version and the shadow."""

    weights: Mapping[str, float] = field(default_factory=dict)
    shadow_version: str = ""
    shadow_share: float = 0.0

    @classmethod
    def of(cls, config: ModelRepositoryConfig) -> RoutingTable:
        return cls(dict(config.weights), config.shadow_version, config.shadow_share)

    def checked(self) -> RoutingTable:
        """Itself, or ValueError naming the bad value (checked as the config checks them)."""
        ModelRepositoryConfig(
            weights=dict(self.weights), shadow_version=self.shadow_version, shadow_share=self.shadow_share
        )
        return self


def key_point(key: str) -> float:
    """The routing key's stable point in [0, 1)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose(weights: Mapping[str, float], serving: Sequence[str], key: str = "") -> str:
    """The version for a request with routing key `key` ("" : random) among `serving` (non-empty)."""
    if len(serving) == 1:
        return serving[0]  # whatever the weights: the one version there is
    ordered = sorted(serving, key=version_key)
    shares = [(v, float(weights.get(v, 0.0))) for v in ordered]
    total = sum(w for _, w in shares if w > 0)
    if total <= 0:
        return ordered[-1]
    point = (key_point(key) if key else random.random()) * total
    cumulative = 0.0
    last = ordered[-1]
    for version, weight in shares:
        if weight <= 0:
            continue
        cumulative += weight
        last = version
        if point < cumulative:
            return version
    return last


def read_routing_file(path: Path) -> RoutingTable:
    """The routing file {weights: {...}, shadow_version: "", shadow_share: 0.0} (YAML or JSON);
    ValueError with the file and the problem when it is not valid."""
    try:
        text = path.read_text()
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"routing file {path}: {exc}") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"routing file {path} must hold a mapping")
    unknown = set(data) - {"weights", "shadow_version", "shadow_share"}
    if unknown:
        raise ValueError(f"routing file {path} has unknown keys {sorted(unknown)}")
    weights = {str(k): float(v) for k, v in (data.get("weights") or {}).items()}
    table = RoutingTable(
        weights, str(data.get("shadow_version") or ""), float(data.get("shadow_share") or 0.0)
    )
    try:
        return table.checked()
    except ValueError as exc:
        raise ValueError(f"routing file {path}: {exc}") from exc
