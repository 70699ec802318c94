"""The version router (lifecycle/routing.py): weighted split, stickiness, the routing file."""

from __future__ import annotations

from pathlib import Path

import pytest
from textserve.core.config import ConfigError, ModelRepositoryConfig
from textserve.lifecycle.repository import scan, wanted
from textserve.lifecycle.routing import RoutingTable, choose, key_point, read_routing_file


def test_ninety_ten_over_5000_keys_lands_ten_percent_on_the_minor_version() -> None:
    keys = [f"customer-{i}" for i in range(5000)]
    minor = sum(choose({"1": 90, "2": 10}, ["1", "2"], key) == "2" for key in keys)
    assert abs(minor / len(keys) - 0.10) <= 0.015, minor


def test_a_key_always_lands_on_the_same_version() -> None:
    for i in range(500):
        key = f"k{i}"
        first = choose({"1": 50, "2": 30, "3": 20}, ["1", "2", "3"], key)
        assert all(choose({"1": 50, "2": 30, "3": 20}, ["3", "1", "2"], key) == first for _ in range(3))


def test_key_point_is_stable_and_in_unit_interval() -> None:
    # BLAKE2b of the key: the same point in every process (no per-process hash seed).
    assert key_point("abc") == key_point("abc")
    assert 0.0 <= key_point("abc") < 1.0
    assert key_point("abc") != key_point("abd")


def test_versions_not_serving_are_left_out_and_the_rest_renormalised() -> None:
    assert {choose({"1": 90, "2": 10}, ["2"], f"k{i}") for i in range(100)} == {"2"}
    # no positive weight among those serving: the newest serving version takes everything
    assert choose({"1": 0}, ["1", "10", "9"], "x") == "10"
    assert choose({}, ["1", "2"], "") == "2"


def test_moving_weights_moves_only_the_keys_it_must() -> None:
    keys = [f"k{i}" for i in range(2000)]
    before = {k: choose({"1": 90, "2": 10}, ["1", "2"], k) for k in keys}
    after = {k: choose({"1": 80, "2": 20}, ["1", "2"], k) for k in keys}
    # cumulative mapping: a key on version 2 at 10 % stays on it at 20 %
    assert all(after[k] == "2" for k in keys if before[k] == "2")


def test_routing_file(tmp_path: Path) -> None:
    good = tmp_path / "routing.yaml"
    good.write_text("weights: {'1': 70, '2': 30}\nshadow_version: '3'\nshadow_share: 0.5\n")
    assert read_routing_file(good) == RoutingTable({"1": 70.0, "2": 30.0}, "3", 0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("weights: {'1': -1}\n")
    with pytest.raises(ValueError, match="negative"):
        read_routing_file(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"weight": {}}')
    with pytest.raises(ValueError, match="unknown keys"):
        read_routing_file(unknown)


def test_version_policy_and_scan(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "notes", "0"):
        (tmp_path / name).mkdir()
    present = scan(tmp_path)
    assert list(present) == ["1", "2", "10"]
    assert wanted(present, ModelRepositoryConfig(path=tmp_path)) == ["10"]
    assert wanted(present, ModelRepositoryConfig(path=tmp_path, latest_n=2)) == ["2", "10"]
    assert wanted(present, ModelRepositoryConfig(path=tmp_path, version_policy="all")) == ["1", "2", "10"]
    specific = ModelRepositoryConfig(path=tmp_path, version_policy="specific", specific_versions=["1", "3"])
    assert wanted(present, specific) == ["1"]


def test_repository_config_is_checked() -> None:
    from textserve.settings import load_settings

    with pytest.raises(ConfigError, match="positive integers"):
        load_settings(environ={"TEXTSERVE_EMBEDDING__REPOSITORY__WEIGHTS": '{"v1": 10}'})
    with pytest.raises(ConfigError, match=r"needs repository\.path"):
        load_settings(environ={"TEXTSERVE_EMBEDDING__REPOSITORY__POLL_INTERVAL_S": "5"})
    settings = load_settings(
        environ={
            "TEXTSERVE_EMBEDDING__REPOSITORY__PATH": "/models",
            "TEXTSERVE_EMBEDDING__REPOSITORY__WEIGHTS": '{"1": 90, "2": 10}',
        }
    )
    assert settings.embedding.repository.weights == {"1": 90.0, "2": 10.0}
