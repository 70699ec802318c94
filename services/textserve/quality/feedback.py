"""Ground-truth feedback: a bounded store of predictions, the join, and live accuracy.

A served prediction is recorded under (request id, text index) with its model, version and
predicted label, never its text. Feedback for the same (request id, index) is joined with
it once: the first feedback is `JOINED`, a later one `DUPLICATE` (counted, not joined
again), and one for an unknown or expired prediction raises `NotFound`. Joined pairs
update a sliding window per (model, version) whose accuracy and per-label recall are
exported as gauges (`quality.metrics`).

Stores (one Protocol, two backends):
- `MemoryPredictionStore`: one replica's LRU, bounded by `max_entries` and a TTL.
- `RedisPredictionStore`: shared by every replica. A prediction is `SET key value EX ttl`;
  every write also pushes the key on an index list and, in the same Lua script, pops and
  deletes the oldest keys beyond `max_entries`, so the store is bounded by count as well
  as by TTL. The first feedback is detected with `SET key:fb label NX EX ttl` inside a
  script that first checks the prediction exists (one round trip, atomic). The scripts
  touch keys derived from their arguments, so this backend needs a single Redis (or one
  hash slot), as the response cache's Redis is.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from textserve.core.errors import NotFound
from textserve.quality.metrics import publish_feedback, publish_live

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One served prediction of one text, as kept for the join (no text)."""

    request_id: str
    """The request's x-request-id."""
    index: int
    """Position of the text in the request."""
    model: str
    """Model name."""
    version: str
    """Model version."""
    label: str
    """Predicted (top) label."""
    confidence: float | None = None
    """Top score, when the model has one."""


class FeedbackResult(enum.Enum):
    """What became of one feedback (the `result` label of textserve_feedback_total)."""

    JOINED = "joined"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Claim:
    """A store's answer to feedback for a known prediction."""

    prediction: Prediction
    first: bool
    """True for the first feedback of this prediction, False for a duplicate."""


class PredictionStore(Protocol):
    """Where predictions wait for their feedback."""

    async def put_many(self, predictions: Sequence[Prediction]) -> None:
        """Keeps the predictions (replacing any with the same request id and index)."""
        ...

    async def claim(self, request_id: str, index: int, label: str) -> Claim | None:
        """Marks the prediction as having feedback; None when unknown or expired."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


def _encode(prediction: Prediction) -> str:
    return json.dumps(
        [prediction.model, prediction.version, prediction.label, prediction.confidence], separators=(",", ":")
    )


def _decode(request_id: str, index: int, raw: bytes | str) -> Prediction:
    model, version, label, confidence = json.loads(raw)
    return Prediction(request_id, index, model, version, label, confidence)


@dataclass
class _Entry:
    prediction: Prediction
    expires_at: float
    claimed: bool = False


class MemoryPredictionStore:
    """An LRU of at most `max_entries` predictions, each joinable for `ttl_s` seconds."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def put_many(self, predictions: Sequence[Prediction]) -> None:
        expires_at = self._clock() + self.ttl_s
        for prediction in predictions:
            key = (prediction.request_id, prediction.index)
            self._entries[key] = _Entry(prediction, expires_at)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def claim(self, request_id: str, index: int, label: str) -> Claim | None:
        key = (request_id, index)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        first = not entry.claimed
        entry.claimed = True
        return Claim(entry.prediction, first)

    async def close(self) -> None:
        self._entries.clear()


_PUT_SCRIPT = """
local ttl = tonumber(ARGV[1])
local max_entries = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', ttl)
  redis.call('DEL', ARGV[i] .. ':fb')
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
local extra = redis.call('LLEN', KEYS[1]) - max_entries
if extra > 0 then
  local old = redis.call('RPOP', KEYS[1], extra)
  for _, key in ipairs(old) do
    redis.call('DEL', key, key .. ':fb')
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return extra
"""

_CLAIM_SCRIPT = """
local prediction = redis.call('GET', KEYS[1])
if not prediction then
  return false
end
local first = redis.call('SET', KEYS[1] .. ':fb', ARGV[1], 'NX', 'EX', tonumber(ARGV[2]))
if first then
  return {prediction, 1}
end
return {prediction, 0}
"""


class RedisPredictionStore:
    """Predictions in Redis under `key_prefix`, bounded by `max_entries` and `ttl_s`.

    Takes a `redis.asyncio.Redis` client (the service builds it from its cache config,
    e.g. with `core.redis_cache.connection_pool`); `close` does not close a client it was given.
    """

    def __init__(self, client: Any, *, key_prefix: str, max_entries: int, ttl_s: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._redis = client
        self.key_prefix = key_prefix
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.index_key = f"{key_prefix}index"
        self._put = client.register_script(_PUT_SCRIPT)
        self._claim = client.register_script(_CLAIM_SCRIPT)

    def key(self, request_id: str, index: int) -> str:
        """The Redis key of one prediction."""
        return f"{self.key_prefix}p:{request_id}:{index}"

    async def put_many(self, predictions: Sequence[Prediction]) -> None:
        if not predictions:
            return
        args: list[Any] = [self.ttl_s, self.max_entries]
        for prediction in predictions:
            args += [self.key(prediction.request_id, prediction.index), _encode(prediction)]
        await self._put(keys=[self.index_key], args=args)

    async def claim(self, request_id: str, index: int, label: str) -> Claim | None:
        reply = await self._claim(keys=[self.key(request_id, index)], args=[label, self.ttl_s])
        if not reply:
            return None
        raw, first = reply
        return Claim(_decode(request_id, index, raw), bool(int(first)))

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class LiveStats:
    """Accuracy and per-label recall over the window of joined pairs of one model version."""

    pairs: int
    accuracy: float
    recall: dict[str, float]
    """Recall of each true label seen in the window."""


class LiveWindow:
    """The latest `size` joined (truth, prediction) pairs, with running counts."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._pairs: deque[tuple[str, str]] = deque()
        self._size = size
        self._correct = 0
        self._true: Counter[str] = Counter()
        self._true_correct: Counter[str] = Counter()

    def add(self, truth: str, predicted: str) -> None:
        """Adds a pair, dropping the oldest when the window is full."""
        if len(self._pairs) == self._size:
            self._count(*self._pairs.popleft(), sign=-1)
        self._pairs.append((truth, predicted))
        self._count(truth, predicted, sign=1)

    def _count(self, truth: str, predicted: str, sign: int) -> None:
        hit = truth == predicted
        self._correct += sign * hit
        self._true[truth] += sign
        self._true_correct[truth] += sign * hit

    def stats(self) -> LiveStats:
        """The window's accuracy and recall (0 pairs: accuracy 0, no recall)."""
        pairs = len(self._pairs)
        recall = {label: self._true_correct[label] / n for label, n in self._true.items() if n > 0}
        return LiveStats(pairs, self._correct / pairs if pairs else 0.0, recall)


class FeedbackJoiner:
    """Records predictions, joins feedback with them and keeps live accuracy per model version."""

    def __init__(self, store: PredictionStore, *, service: str, window_size: int = 1000) -> None:
        self.store = store
        self.service = service
        self.window_size = window_size
        self._windows: dict[tuple[str, str], LiveWindow] = {}

    async def record(self, predictions: Sequence[Prediction]) -> None:
        """Keeps the predictions for a later join; a store failure is logged, never raised."""
        try:
            await self.store.put_many(predictions)
        except Exception:
            log.warning("could not keep %d predictions for feedback", len(predictions), exc_info=True)

    async def feedback(self, request_id: str, index: int, label: str) -> FeedbackResult:
        """Joins the true `label` with the prediction; NotFound when unknown or expired."""
        claim = await self.store.claim(request_id, index, label)
        if claim is None:
            publish_feedback(self.service, "", "", FeedbackResult.UNKNOWN.value)
            raise NotFound(f"no prediction for request {request_id!r} text {index} (unknown or expired)")
        model, version = claim.prediction.model, claim.prediction.version
        if not claim.first:
            publish_feedback(self.service, model, version, FeedbackResult.DUPLICATE.value)
            return FeedbackResult.DUPLICATE
        correct = label == claim.prediction.label
        publish_feedback(self.service, model, version, FeedbackResult.JOINED.value, correct)
        window = self._windows.get((model, version))
        if window is None:
            window = self._windows[(model, version)] = LiveWindow(self.window_size)
        window.add(label, claim.prediction.label)
        stats = window.stats()
        publish_live(self.service, model, version, stats.accuracy, stats.recall, stats.pairs)
        return FeedbackResult.JOINED

    def live(self, model: str, version: str) -> LiveStats | None:
        """The live stats of one model version; None before its first joined feedback."""
        window = self._windows.get((model, version))
        return None if window is None else window.stats()

    async def close(self) -> None:
        """Closes the store."""
        await self.store.close()
