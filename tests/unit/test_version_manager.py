"""The version manager (lifecycle/manager.py) over small in-memory runtimes: states, drain,
failures that stay with their version, shadow failures that reach nobody."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textserve.core.config import ModelRepositoryConfig
from textserve.core.errors import NotFound, NotReady
from textserve.core.metrics import REGISTRY
from textserve.lifecycle.manager import VersionManager

from tests.support import settle, wait_until


class Runtime:
    """Records its lifecycle; a folder holding a file `broken` fails to start."""

    def __init__(self, version: str, folder: Path | None) -> None:
        self.version = version
        self.folder = folder
        self.events: list[str] = []

    async def start(self) -> None:
        if self.folder is not None and (self.folder / "broken").exists():
            raise ValueError(f"cannot read {self.folder}")
        self.events.append("start")

    async def warm(self) -> None:
        self.events.append("warm")

    async def stop(self) -> None:
        self.events.append("stop")


def manager(root: Path, **settings: object) -> VersionManager[Runtime]:
    config = ModelRepositoryConfig(path=root, version_policy="all", **settings)  # type: ignore[arg-type]
    return VersionManager("unit-lifecycle", "m", config, Runtime)


def folder(root: Path, version: str, broken: bool = False) -> None:
    (root / "m" / version).mkdir(parents=True)
    if broken:
        (root / "m" / version / "broken").write_text("x")


async def test_versions_are_warmed_and_a_broken_one_fails_alone(tmp_path: Path) -> None:
    folder(tmp_path, "1")
    folder(tmp_path, "2", broken=True)
    versions = manager(tmp_path)
    await versions.start()
    states = {s.version: (s.state, s.reason) for s in versions.statuses()}
    assert states["1"] == ("READY", "")
    assert states["2"][0] == "FAILED" and "cannot read" in states["2"][1]
    one = versions.slots["1"].runtime
    assert one is not None and one.events == ["start", "warm"]
    assert versions.pick().version == "1"  # the failed version takes nothing
    failed = {"service": "unit-lifecycle", "model": "m", "version": "2", "state": "FAILED"}
    assert REGISTRY.get_sample_value("textserve_model_version_state", failed) == 1.0
    with pytest.raises(NotReady, match="FAILED"):
        versions.pick(pin="2")
    with pytest.raises(NotFound):
        versions.pick(pin="7")
    await versions.stop()


async def test_unloading_waits_for_calls_in_flight(tmp_path: Path) -> None:
    folder(tmp_path, "1")
    folder(tmp_path, "2")
    versions = manager(tmp_path, weights={"1": 100})
    await versions.start()
    release = asyncio.Event()
    inside = asyncio.Event()

    async def call() -> str:
        async with versions.route(pin="1") as slot:
            inside.set()
            await release.wait()
            return slot.version

    caller = asyncio.create_task(call())
    await inside.wait()
    runtime = versions.slots["1"].runtime
    assert runtime is not None
    unloading = asyncio.create_task(versions.unload("1"))
    await wait_until(lambda: versions.slots["1"].state == "UNLOADING")
    await settle()
    assert "stop" not in runtime.events  # the call in flight still has its model
    assert versions.pick().version == "2"  # new calls go elsewhere at once
    release.set()
    assert await caller == "1"
    status = await unloading
    assert status.state == "UNAVAILABLE" and runtime.events[-1] == "stop"
    await versions.stop()


async def test_a_failing_shadow_reaches_nobody(tmp_path: Path) -> None:
    folder(tmp_path, "1")
    folder(tmp_path, "2")
    versions = manager(tmp_path, weights={"1": 100}, shadow_version="2", shadow_share=1.0)
    await versions.start()

    async def broken(runtime: Runtime, deadline: float) -> float:
        raise RuntimeError("shadow exploded")

    labels = {"service": "unit-lifecycle", "model": "m", "version": "2", "outcome": "failed"}
    before = REGISTRY.get_sample_value("textserve_shadow_requests_total", labels) or 0.0
    assert versions.pick().version == "1"  # the shadow takes no weighted traffic
    assert versions.mirror("1", broken) is True
    await versions.shadows_done()
    assert REGISTRY.get_sample_value("textserve_shadow_requests_total", labels) == before + 1
    await versions.stop()


async def test_primary_idle_and_arrival_tell_a_shadow_when_to_run_and_to_give_way(tmp_path: Path) -> None:
    folder(tmp_path, "1")
    folder(tmp_path, "2")
    versions = manager(tmp_path, weights={"1": 100}, shadow_version="2", shadow_share=1.0)
    await versions.start()
    release = asyncio.Event()

    async def client() -> None:
        async with versions.route():
            await release.wait()

    first = asyncio.create_task(client())
    await settle()
    assert versions.primary_busy()
    idle = asyncio.create_task(versions.primary_idle())
    await settle()
    assert not idle.done()  # a client call is in flight
    release.set()
    await first
    await settle()
    assert idle.done() and not versions.primary_busy()

    arrived = asyncio.create_task(versions.primary_arrives())
    async with versions.route(pin="2"):  # a call to the shadow version itself is not an arrival
        await settle()
    assert not arrived.done()
    release.clear()
    second = asyncio.create_task(client())
    await settle()
    assert arrived.done()  # the next client call woke the waiting shadow
    release.set()
    await second

    skipped = {"service": "unit-lifecycle", "model": "m", "version": "2", "outcome": "skipped"}
    before = REGISTRY.get_sample_value("textserve_shadow_requests_total", skipped) or 0.0

    async def gave_way(runtime: Runtime, deadline: float) -> float | None:
        return None

    assert versions.mirror("1", gave_way) is True
    await versions.shadows_done()
    assert REGISTRY.get_sample_value("textserve_shadow_requests_total", skipped) == before + 1
    await versions.stop()


async def test_a_routed_call_is_counted_with_its_outcome_and_its_error_passes_through(tmp_path: Path) -> None:
    folder(tmp_path, "1")
    versions = manager(tmp_path)
    versions.code_of = lambda error: "OK" if error is None else type(error).__name__
    await versions.start()
    labels = {"service": "unit-lifecycle", "model": "m", "version": "1"}

    def count(code: str) -> float:
        return REGISTRY.get_sample_value("textserve_model_requests_total", {**labels, "code": code}) or 0.0

    ok, failed = count("OK"), count("KeyError")
    async with versions.route() as slot:
        assert slot.version == "1" and slot.calls == 1 and not slot.idle.is_set()
    with pytest.raises(KeyError, match="boom"):
        async with versions.route(pin="1"):
            raise KeyError("boom")
    assert count("OK") == ok + 1 and count("KeyError") == failed + 1
    assert versions.slots["1"].calls == 0 and versions.slots["1"].idle.is_set()
    await versions.stop()
