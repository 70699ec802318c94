"""The version manager: the versions of one model, their states, loading, draining, routing, shadow.

Each version is a slot holding its own runtime (an Encoder, a scorer: anything with
`start`/`warm`/`stop`, built by the service's `build(version, folder)`), with its own batcher
and budget. States: LOADING -> READY, or FAILED with the reason (logged; the versions already
serving never notice); READY -> UNLOADING (no new call is routed to it; its queued and
in-flight calls finish) -> UNAVAILABLE (runtime stopped and released, memory handed back).

A new version is warmed (`runtime.warm()`: one forward per batch shape) before it takes
traffic; loading a newer version never unloads an older one before the newer is READY
(Triton's reload fix). `reconcile` brings the served versions to what the repository and the
policy want (the OIP RepositoryModelLoad and poll mode); `load`/`unload` act on one version
(the native ModelControl RPCs). Requests go through `route(pin, key)`, an async context that
counts the call on its version (for draining) and records the per-version metrics; after the
primary answered, `mirror` may run the same request on the shadow version in a background task
with its own deadline, recording agreement and latency. `primary_idle` / `primary_arrives` let
a shadow run that would compete with client calls for the cores (a generation engine) start
only when no client call is in flight and give way when one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Generic, Literal, Protocol, TypeVar

from textserve.core import metrics
from textserve.core.config import ModelRepositoryConfig
from textserve.core.errors import NotFound, NotReady
from textserve.lifecycle.repository import DEFAULT_VERSION, model_folder, scan, version_key, wanted
from textserve.lifecycle.routing import RoutingTable, choose, read_routing_file

log = logging.getLogger(__name__)

State = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE", "FAILED"]
STATES: tuple[State, ...] = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE", "FAILED")


class VersionRuntime(Protocol):
    """What the manager needs from one version's runtime."""

    async def start(self) -> None:
        """Loads the model and starts its batcher (raises on a corrupt or unusable folder)."""
        ...

    async def warm(self) -> None:
        """One forward per batch shape it will see, before it takes traffic."""
        ...

    async def stop(self) -> None:
        """Stops the batcher and lets go of the model."""
        ...


R = TypeVar("R", bound=VersionRuntime)


@dataclass
class VersionSlot(Generic[R]):
    """One version: its folder, runtime, state (with the reason of a failure) and calls in flight."""

    version: str
    folder: Path | None
    runtime: R | None = None
    state: State = "UNAVAILABLE"
    reason: str = ""
    calls: int = 0
    folder_stamp: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class RoutedCall(Generic[R]):
    """One request's `async with manager.route(pin, key) as slot:` block (a plain class: it runs
    on every request, where a generator-based context manager costs several times as much)."""

    __slots__ = ("_key", "_manager", "_pin", "_slot", "_started")

    def __init__(self, manager: VersionManager[R], pin: str, key: str) -> None:
        self._manager = manager
        self._pin = pin
        self._key = key

    async def __aenter__(self) -> VersionSlot[R]:
        self._slot = self._manager._enter(self._pin, self._key)
        self._started = time.perf_counter()
        return self._slot

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._manager._leave(self._slot, error, self._started)


@dataclass(frozen=True)
class VersionStatus:
    """What ListVersions reports about one version."""

    version: str
    state: State
    reason: str
    weight: float
    shadow: bool
    in_flight: int


def release_memory() -> None:
    """Collects garbage and hands freed heap back to the OS (glibc malloc_trim; no-op elsewhere)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _stamp(folder: Path | None) -> float:
    """Latest modification time of a version folder and its direct entries (a changed folder is retried)."""
    if folder is None:
        return 0.0
    try:
        return max([folder.stat().st_mtime, *(entry.stat().st_mtime for entry in folder.iterdir())])
    except OSError:
        return 0.0


def error_code_name(error: BaseException | None) -> str:
    """Default `code` label: OK, else the error kind's class name (services pass the gRPC name)."""
    return "OK" if error is None else type(error).__name__


class VersionManager(Generic[R]):
    """The versions of one model of one service; see the module docstring."""

    def __init__(
        self,
        service: str,
        model: str,
        config: ModelRepositoryConfig,
        build: Callable[[str, Path | None], R],
        *,
        code_of: Callable[[BaseException | None], str] = error_code_name,
    ) -> None:
        self.service = service
        self.model = model
        self.config = config
        self._build = build
        self.code_of = code_of
        """Names the `code` label of an outcome (None: OK) in textserve_model_requests_total."""
        self.slots: dict[str, VersionSlot[R]] = {}
        self.routing = RoutingTable.of(config)
        self._routing_stamp: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._shadows: set[asyncio.Task[None]] = set()
        self._reconciling = asyncio.Lock()
        self._serving: list[str] = []
        self._published_weights: set[str] = set()
        self._arrival_waiters: set[asyncio.Future[None]] = set()

    # --- the repository ------------------------------------------------------------------
    @property
    def has_repository(self) -> bool:
        return self.config.path is not None

    @property
    def folder(self) -> Path | None:
        """`<repository>/<model>`, or None without a repository."""
        return model_folder(self.config, self.model) if self.has_repository else None

    def available(self) -> dict[str, Path]:
        """Version folders present now."""
        folder = self.folder
        return scan(folder) if folder is not None else {}

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the versions the policy wants (or the one default version), then starts the
        poll loop and the routing-file watch when configured."""
        if self.config.routing_file is not None:
            self._check_routing_file()
        if not self.has_repository:
            await self._load(self._slot(DEFAULT_VERSION, None), warm=False, reraise=True)
        else:
            await self.reconcile()
        self._publish_routing()
        if self.config.poll_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._poll(), name=f"poll-{self.service}"))
        elif self.config.routing_file is not None:
            self._tasks.append(asyncio.create_task(self._watch_routing(), name=f"routing-{self.service}"))

    async def stop(self) -> None:
        """Stops polling, waits for shadow calls, stops every runtime."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
        for slot in list(self.slots.values()):
            if slot.runtime is not None:
                with contextlib.suppress(Exception):
                    await slot.runtime.stop()
                slot.runtime = None
                self._set_state(slot, "UNAVAILABLE")

    def _slot(self, version: str, folder: Path | None) -> VersionSlot[R]:
        slot = self.slots.get(version)
        if slot is None:
            slot = VersionSlot(version, folder)
            self.slots[version] = slot
        elif folder is not None:
            slot.folder = folder
        return slot

    def _set_state(self, slot: VersionSlot[R], state: State, reason: str = "") -> None:
        slot.state = state
        slot.reason = reason
        for name in STATES:
            metrics.MODEL_VERSION_STATE.labels(self.service, self.model, slot.version, name).set(
                1 if name == state else 0
            )
        self._serving = sorted((v for v, s in self.slots.items() if s.state == "READY"), key=version_key)
        self._publish_routing()

    async def _load(self, slot: VersionSlot[R], *, warm: bool = True, reraise: bool = False) -> None:
        """Loads (and warms) a slot's version; a failure marks it FAILED (re-raised with `reraise`:
        the one version of a service without a repository fails the start as before)."""
        async with slot.lock:
            if slot.state in ("READY", "LOADING"):
                return
            self._set_state(slot, "LOADING")
            slot.folder_stamp = _stamp(slot.folder)
            started = time.perf_counter()
            runtime: R | None = None
            try:
                runtime = self._build(slot.version, slot.folder)
                await runtime.start()
                if warm:
                    await runtime.warm()
            except Exception as error:  # any failure of one version stays with that version
                reason = f"{type(error).__name__}: {error}"
                log.error(
                    "model version failed to load",
                    extra={
                        "service": self.service,
                        "model": self.model,
                        "version": slot.version,
                        "folder": str(slot.folder or ""),
                        "reason": reason,
                    },
                )
                if runtime is not None:
                    with contextlib.suppress(Exception):
                        await runtime.stop()
                del runtime
                release_memory()
                self._set_state(slot, "FAILED", reason)
                if reraise:
                    raise
                return
            slot.runtime = runtime
            self._set_state(slot, "READY")
            log.info(
                "model version ready",
                extra={
                    "service": self.service,
                    "model": self.model,
                    "version": slot.version,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )

    async def _unload(self, slot: VersionSlot[R]) -> None:
        async with slot.lock:
            if slot.runtime is None:
                if slot.state != "FAILED":
                    self._set_state(slot, "UNAVAILABLE")
                return
            self._set_state(slot, "UNLOADING")  # routed no more from here
            if slot.calls:
                try:
                    await asyncio.wait_for(slot.idle.wait(), self.config.drain_timeout_s)
                except TimeoutError:
                    log.warning(
                        "model version still busy after drain_timeout_s; stopping it",
                        extra={"service": self.service, "version": slot.version, "calls": slot.calls},
                    )
            runtime, slot.runtime = slot.runtime, None
            await runtime.stop()
            del runtime
            release_memory()
            self._set_state(slot, "UNAVAILABLE")
            log.info(
                "model version unloaded",
                extra={"service": self.service, "model": self.model, "version": slot.version},
            )

    async def load(self, version: str) -> VersionStatus:
        """Loads one version folder of the repository (whatever the policy); FAILED is reported,
        not raised. NotFound when the repository has no such folder."""
        if not self.has_repository:
            if version == DEFAULT_VERSION and version in self.slots:
                slot = self.slots[version]
                await self._load(slot, warm=False)
                return self.status(version)
            raise NotFound(f"no model repository: only version {DEFAULT_VERSION} is served")
        folder = self.available().get(version)
        if folder is None:
            raise NotFound(f"version {version!r} has no folder under {self.folder}")
        slot = self._slot(version, folder)
        if slot.state == "FAILED":
            self._set_state(slot, "UNAVAILABLE")
        await self._load(slot)
        return self.status(version)

    def failures(self) -> dict[str, str]:
        """FAILED versions the policy wants, with their reasons."""
        want = set(wanted(self.available(), self.config)) if self.has_repository else {DEFAULT_VERSION}
        return {v: s.reason for v, s in self.slots.items() if s.state == "FAILED" and v in want}

    async def unload_all(self) -> None:
        """Unloads every version (OIP RepositoryModelUnload)."""
        for slot in list(self.slots.values()):
            await self._unload(slot)

    async def unload(self, version: str) -> VersionStatus:
        """Stops routing to a version, lets its calls finish, frees it. NotFound when unknown."""
        slot = self.slots.get(version)
        if slot is None:
            raise NotFound(f"version {version!r} is not known; known: {self.versions()}")
        await self._unload(slot)
        return self.status(version)

    async def reconcile(self) -> None:
        """Loads the versions the policy wants that are not loaded (a FAILED one again only when its
        folder changed), then unloads served versions no longer wanted or whose folder is gone."""
        if not self.has_repository:
            await self._load(self._slot(DEFAULT_VERSION, None), warm=False)
            return
        async with self._reconciling:
            present = self.available()
            want = wanted(present, self.config)
            for version in want:
                slot = self._slot(version, present[version])
                if slot.state == "FAILED" and _stamp(slot.folder) == slot.folder_stamp:
                    continue
                if slot.state == "FAILED":
                    self._set_state(slot, "UNAVAILABLE")
                await self._load(slot)
            for version, slot in list(self.slots.items()):
                if version not in want and slot.state in ("READY", "LOADING"):
                    await self._unload(slot)
                if version not in present and slot.state in ("UNAVAILABLE", "FAILED"):
                    del self.slots[version]
                    for name in STATES:
                        metrics.MODEL_VERSION_STATE.labels(self.service, self.model, version, name).set(0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                self._check_routing_file()
                await self.reconcile()
            except Exception:  # the poll loop outlives any one bad scan
                log.exception("model repository poll failed", extra={"service": self.service})

    async def _watch_routing(self) -> None:
        while True:
            await asyncio.sleep(self.config.routing_file_check_s)
            self._check_routing_file()

    def _check_routing_file(self) -> None:
        """Re-reads routing_file when its modification time changed; a bad file is logged and the
        routing in force kept."""
        path = self.config.routing_file
        if path is None:
            return
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return
        if stamp == self._routing_stamp:
            return
        self._routing_stamp = stamp
        try:
            table = read_routing_file(path)
        except ValueError as exc:
            log.error("routing file not applied", extra={"service": self.service, "error": str(exc)})
            return
        self.set_routing(table)
        log.info("routing file applied", extra={"service": self.service, "weights": dict(table.weights)})

    # --- routing ---------------------------------------------------------------------------
    def set_routing(self, table: RoutingTable) -> None:
        """New weights and shadow for new requests (calls in flight are not affected)."""
        self.routing = table
        self._publish_routing()

    def _publish_routing(self) -> None:
        serving = self._weighted()
        shares = {v: 0.0 for v in self.slots}
        total = sum(max(0.0, float(self.routing.weights.get(v, 0.0))) for v in serving)
        if serving:
            if total > 0:
                for v in serving:
                    shares[v] = max(0.0, float(self.routing.weights.get(v, 0.0))) / total
            else:
                shares[serving[-1]] = 1.0
        for version in self._published_weights - set(shares):
            metrics.ROUTING_WEIGHT.labels(self.service, self.model, version).set(0)
        for version, share in shares.items():
            metrics.ROUTING_WEIGHT.labels(self.service, self.model, version).set(share)
        self._published_weights = set(shares)

    def _weighted(self) -> list[str]:
        """READY versions that take weighted traffic (the shadow does not), ascending."""
        shadow = self.routing.shadow_version
        return [v for v in self._serving if v != shadow]

    def pick(self, pin: str = "", key: str = "") -> VersionSlot[R]:
        """The slot for a request: the pinned version (NotFound / NotReady unless READY), else the
        weighted choice sticky per key; NotReady when no version is READY."""
        if pin:
            slot = self.slots.get(pin)
            if slot is None:
                raise NotFound(f"model version {pin!r} is not served; versions: {self.versions()}")
            if slot.state != "READY" or slot.runtime is None:
                raise NotReady(f"model version {pin!r} is {slot.state}")
            return slot
        serving = self._weighted() or self._serving
        if not serving:
            raise NotReady("no model version is ready")
        return self.slots[choose(self.routing.weights, serving, key)]

    def primary(self) -> VersionSlot[R]:
        """The slot Info-style calls describe: the largest weight, ties to the newest; NotReady
        when none is READY."""
        serving = self._weighted() or self._serving
        if not serving:
            raise NotReady("model is still loading")
        weights = self.routing.weights
        best = max(serving, key=lambda v: (float(weights.get(v, 0.0)), version_key(v)))
        return self.slots[best]

    @property
    def ready(self) -> bool:
        return bool(self._serving)

    def serving(self) -> list[str]:
        """READY versions, ascending."""
        return list(self._serving)

    def route(self, pin: str = "", key: str = "") -> RoutedCall[R]:
        """An async context giving the chosen slot (`pick`, on entry), its call counted until the
        block ends (unloading waits for it), with textserve_model_requests_total /
        _request_duration_seconds recorded."""
        return RoutedCall(self, pin, key)

    def _enter(self, pin: str, key: str) -> VersionSlot[R]:
        slot = self.pick(pin, key)
        slot.calls += 1
        slot.idle.clear()
        if self._arrival_waiters and slot.version != self.routing.shadow_version:
            for waiter in self._arrival_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._arrival_waiters.clear()
        return slot

    def _leave(self, slot: VersionSlot[R], error: BaseException | None, started: float) -> None:
        slot.calls -= 1
        if slot.calls == 0:
            slot.idle.set()
        version = slot.version
        metrics.child(metrics.MODEL_REQUESTS, self.service, self.model, version, self.code_of(error)).inc()
        metrics.child(metrics.MODEL_REQUEST_DURATION, self.service, self.model, version).observe(
            time.perf_counter() - started
        )

    # --- shadow ----------------------------------------------------------------------------
    def primary_busy(self) -> bool:
        """True while a call routed to a version other than the shadow is in flight."""
        shadow = self.routing.shadow_version
        return any(slot.calls for version, slot in self.slots.items() if version != shadow)

    async def primary_idle(self) -> None:
        """Returns once no call to a version other than the shadow is in flight."""
        while True:
            shadow = self.routing.shadow_version
            busy = [slot for version, slot in self.slots.items() if version != shadow and slot.calls]
            if not busy:
                return
            await asyncio.gather(*(slot.idle.wait() for slot in busy))

    async def primary_arrives(self) -> None:
        """Returns when the next call is routed to a version other than the shadow (a shadow
        run that must not compete with client calls gives way then)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrival_waiters.add(waiter)
        try:
            await waiter
        finally:
            self._arrival_waiters.discard(waiter)

    def mirror(
        self, primary: str, run: Callable[[R, float], Awaitable[float | None]], *, skip: bool = False
    ) -> bool:
        """After the primary answered: with probability shadow_share, runs `run(shadow_runtime,
        deadline)` (which returns the agreement in [0, 1], or None: not compared, counted
        'skipped') in a background task with its own deadline; `skip`: a request that cannot be
        compared (counted 'skipped' when drawn).
        Never raises, never waits. True when a shadow call was started."""
        table = self.routing
        shadow = table.shadow_version
        if not shadow or shadow == primary or table.shadow_share <= 0:
            return False
        if table.shadow_share < 1.0 and random.random() >= table.shadow_share:
            return False
        slot = self.slots.get(shadow)
        labels = (self.service, self.model, shadow)
        if skip or slot is None or slot.state != "READY" or slot.runtime is None:
            metrics.child(metrics.SHADOW_REQUESTS, *labels, "skipped").inc()
            return False
        if len(self._shadows) >= self.config.max_shadow_in_flight:
            metrics.child(metrics.SHADOW_REQUESTS, *labels, "skipped").inc()
            return False
        task = asyncio.create_task(self._shadow(slot, run), name=f"shadow-{self.service}")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        return True

    async def _shadow(self, slot: VersionSlot[R], run: Callable[[R, float], Awaitable[float | None]]) -> None:
        labels = (self.service, self.model, slot.version)
        slot.calls += 1
        slot.idle.clear()
        started = time.perf_counter()
        try:
            runtime = slot.runtime
            if runtime is None:
                metrics.child(metrics.SHADOW_REQUESTS, *labels, "skipped").inc()
                return
            agreement = await run(runtime, time.monotonic() + self.config.shadow_timeout_s)
        except Exception as error:  # a shadow failure never reaches a client
            metrics.child(metrics.SHADOW_REQUESTS, *labels, "failed").inc()
            log.debug("shadow call failed", extra={"service": self.service, "error": repr(error)})
            return
        finally:
            slot.calls -= 1
            if slot.calls == 0:
                slot.idle.set()
        if agreement is None:
            metrics.child(metrics.SHADOW_REQUESTS, *labels, "skipped").inc()
            return
        metrics.child(metrics.SHADOW_LATENCY, *labels).observe(time.perf_counter() - started)
        metrics.child(metrics.SHADOW_AGREEMENT, *labels).observe(agreement)
        metrics.child(metrics.SHADOW_REQUESTS, *labels, "compared").inc()

    async def shadows_done(self) -> None:
        """Waits for the shadow calls running now (tests, shutdown)."""
        while self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)

    # --- description -----------------------------------------------------------------------
    def versions(self) -> list[str]:
        return sorted(self.slots, key=version_key)

    def status(self, version: str) -> VersionStatus:
        slot = self.slots[version]
        return VersionStatus(
            version=version,
            state=slot.state,
            reason=slot.reason,
            weight=float(self.routing.weights.get(version, 0.0)),
            shadow=version == self.routing.shadow_version,
            in_flight=slot.calls,
        )

    def statuses(self) -> list[VersionStatus]:
        """Every version known: loaded, failed, or present in the repository and not loaded."""
        for version, folder in self.available().items():
            self._slot(version, folder)
        return [self.status(v) for v in self.versions()]

    def runtimes(self) -> Sequence[tuple[str, R]]:
        """(version, runtime) of every loaded version."""
        return [(v, s.runtime) for v, s in sorted(self.slots.items()) if s.runtime is not None]
