"""Redis backend of the response cache, shared by every replica of a service.

One MGET per read and one non-transactional pipeline of `SET key value EX ttl` per write,
each a single round trip. Every call is bounded by `timeout_ms` (socket timeouts and an
asyncio timeout). Connection-level failures (refused, reset, timed out, auth) open a
circuit breaker: while it is open calls are refused at once with `CacheUnavailable`, so a
request never pays a connect timeout for a Redis that is down; after an exponential
backoff (reconnect_backoff_min_s doubling up to reconnect_backoff_max_s, with jitter) one
call probes Redis on a fresh connection and closes the breaker when it answers. Replies
that are errors (OOM when maxmemory is reached, READONLY replicas) are raised to the
caller, which counts them, but do not open the breaker: Redis is reachable.
`ResponseCache` turns every raised error into "serve from the model".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from textserve.core.breaker import CircuitBreaker
from textserve.core.cache import CacheUnavailable
from textserve.core.config import CacheConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures that say Redis is unreachable or too slow (they open the breaker).
_CONNECTIVITY_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TimeoutError,
    OSError,
)


def redis_password(config: CacheConfig) -> str | None:
    """The password from password or password_file (trailing newline dropped); None: the URL's."""
    if config.password is not None:
        return config.password.get_secret_value()
    if config.password_file is not None:
        return config.password_file.read_text().rstrip("\r\n")
    return None


def connection_pool(config: CacheConfig) -> redis.asyncio.BlockingConnectionPool:
    """A bounded pool from the URL, with password, TLS files and timeouts from the config.

    Redis' own retries are off (the breaker decides when to try again); a call waiting
    for a free connection waits at most timeout_ms.
    """
    timeout_s = config.timeout_ms / 1000.0
    kwargs: dict[str, Any] = {
        "max_connections": config.pool_size,
        "timeout": timeout_s,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "client_name": "textserve",
    }
    if urlsplit(config.url).scheme == "rediss":
        if config.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(config.tls_ca_file)
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            kwargs["ssl_certfile"] = str(config.tls_cert_file)
            kwargs["ssl_keyfile"] = str(config.tls_key_file)
    pool = redis.asyncio.BlockingConnectionPool.from_url(config.url, **kwargs)
    password = redis_password(config)
    if password is not None:
        # from_url lets the URL's password win over keyword arguments; ours must win.
        pool.connection_kwargs["password"] = password
    return pool


def redacted_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


class RedisCacheBackend:
    """CacheBackend over redis.asyncio with a circuit breaker; see the module docstring."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self._timeout_s = config.timeout_ms / 1000.0
        self._pool = connection_pool(config)
        self._client = redis.asyncio.Redis.from_pool(self._pool)
        self.breaker = CircuitBreaker(config.reconnect_backoff_min_s, config.reconnect_backoff_max_s)
        self._where = redacted_url(config.url)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET; raises CacheUnavailable while the breaker is open."""
        values = await self._call(lambda: self._client.mget(list(keys)))
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        """One pipeline of SET ... EX ttl_s (not a transaction); raises on any failed SET (e.g. OOM)."""

        async def write() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=ttl_s)
                await pipe.execute(raise_on_error=True)

        await self._call(write)

    async def close(self) -> None:
        """Closes the client and every pooled connection."""
        await self._client.aclose()

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise CacheUnavailable(f"redis skipped for {self.breaker.retry_in:.2f}s more after errors")
        was_down = self.breaker.state != "closed"
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await operation()
        except redis.exceptions.ResponseError:
            self._reached(was_down)  # Redis answered (OOM, READONLY, ...): it is up
            raise
        except _CONNECTIVITY_ERRORS as exc:
            await self._failed(exc)
            raise
        except BaseException:
            self.breaker.release()  # cancelled by our caller, or a bug: says nothing about Redis
            raise
        self._reached(was_down)
        return result

    def _reached(self, was_down: bool) -> None:
        self.breaker.success()
        if was_down:
            log.info("redis reachable again; cache back in use", extra={"redis": self._where})

    async def _failed(self, exc: BaseException) -> None:
        was_closed = self.breaker.state == "closed"
        wait = self.breaker.failure()
        if self.breaker.state == "closed":
            return
        # Pooled connections may all be dead (Redis restarted): the probe starts afresh.
        with contextlib.suppress(Exception):
            await self._pool.disconnect(inuse_connections=False)
        log.log(
            logging.WARNING if was_closed else logging.DEBUG,
            "redis unavailable; serving without cache until it answers again",
            extra={"redis": self._where, "error": repr(exc), "retry_in_s": round(wait, 3)},
        )
