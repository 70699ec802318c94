"""docs/deploy.md documents every chart value."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.chart.conftest import CHART_DIR, REPO

DOC = (REPO / "docs" / "deploy.md").read_text()
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
# Keys inside Kubernetes objects the chart passes through (EnvVar.name).
PASS_THROUGH = {"name"}


def _keys(node: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, child in node.get("properties", {}).items():
            keys.add(key)
            keys |= _keys(child)
        for child in node.values():
            if isinstance(child, dict) and child is not node.get("properties"):
                keys |= _keys(child)
    return keys


def test_every_value_key_is_in_the_reference() -> None:
    table = DOC[DOC.index("## 10. Values reference") :]
    documented = set(re.findall(r"[A-Za-z][A-Za-z0-9]*", table))
    missing = sorted(_keys(SCHEMA) - documented - PASS_THROUGH)
    assert not missing, f"docs/deploy.md's values reference lacks {missing}"


def test_every_ci_values_file_is_mentioned() -> None:
    for path in sorted((CHART_DIR / "ci").glob("*.yaml")):
        assert f"ci/{path.name}" in DOC
    assert "values-gpu.yaml" in DOC
