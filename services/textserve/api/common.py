"""Builds common.proto messages (ModelInfo, Usage, Timing, Limits, BatchBudget)."""

from __future__ import annotations

from typing import Protocol

from textserve.core.batcher import BatchBudget
from textserve.core.config import BatcherConfig, LimitsConfig, ServerConfig
from textserve.core.errors import InvalidInput
from textserve.v1 import common_pb2


def model_info(
    name: str,
    revision: str,
    backend: str,
    device: str,
    max_input_tokens: int,
    precision: str = "",
    version: str = "",
) -> common_pb2.ModelInfo:
    """ModelInfo message (precision, version empty: not reported)."""
    return common_pb2.ModelInfo(
        name=name,
        revision=revision,
        backend=backend,
        device=device,
        max_input_tokens=max_input_tokens,
        precision=precision,
        version=version,
    )


class EncoderModel(Protocol):
    """What an encoder-based service knows of its model (runtime's EncoderInfo, the classifier's
    EncoderDescription)."""

    @property
    def name(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def max_length(self) -> int: ...
    @property
    def precision(self) -> str: ...


_MODEL_INFOS: dict[tuple[int, str], tuple[EncoderModel, common_pb2.ModelInfo]] = {}
"""encoder_model_info's messages by (id of the model description, version): built once per loaded
model, not per response (descriptions are immutable; the entry keeps its own alive, so an id is
not reused while it is here)."""


def encoder_model_info(model: EncoderModel, version: str = "") -> common_pb2.ModelInfo:
    """ModelInfo of an encoder model (and the model version that served); the same message for
    every call with the same description and version: copy it (a field assignment or
    a constructor argument does), do not change it."""
    key = (id(model), version)
    known = _MODEL_INFOS.get(key)
    if known is not None and known[0] is model:
        return known[1]
    message = model_info(
        model.name, model.revision, model.backend, model.device, model.max_length, model.precision, version
    )
    if len(_MODEL_INFOS) >= 64:  # models loaded and unloaded many times over
        _MODEL_INFOS.clear()
    _MODEL_INFOS[key] = (model, message)
    return message


def timing(tokenize_s: float, queue_s: float, inference_s: float, total_s: float) -> common_pb2.Timing:
    """Timing message from seconds."""
    return common_pb2.Timing(
        tokenize_time_ns=int(tokenize_s * 1e9),
        queue_time_ns=int(queue_s * 1e9),
        inference_time_ns=int(inference_s * 1e9),
        total_time_ns=int(total_s * 1e9),
    )


def limits(config: LimitsConfig, server: ServerConfig, max_tokens: int) -> common_pb2.Limits:
    """Limits message."""
    return common_pb2.Limits(
        max_texts_per_request=config.max_texts_per_request,
        max_text_chars=config.max_text_chars,
        max_tokens_per_text=max_tokens,
        max_request_bytes=server.max_message_bytes,
    )


def batch_budget(budget: BatchBudget, config: BatcherConfig) -> common_pb2.BatchBudget:
    """BatchBudget message."""
    return common_pb2.BatchBudget(
        max_batch_size=budget.max_batch_size,
        max_batch_tokens=budget.max_batch_tokens,
        max_queue_delay_ms=int(config.max_queue_delay_ms),
        max_queue_size=config.max_queue_size,
        source=budget.source,
    )


_TRUNCATION_POLICIES = frozenset(common_pb2.TruncationPolicy.values())


def truncation_flag(policy: int, field: str = "truncation") -> bool | None:
    """A request's TruncationPolicy -> True (cut), False (reject) or None (service default);
    InvalidInput naming `field` for a value the enum does not have."""
    if policy not in _TRUNCATION_POLICIES:
        raise InvalidInput(field, f"unknown TruncationPolicy value {policy}")
    return truncate_flag(policy)


def truncate_flag(policy: int) -> bool | None:
    """TruncationPolicy -> True (cut), False (reject) or None (service default)."""
    if policy == common_pb2.TRUNCATION_POLICY_TRUNCATE:
        return True
    if policy == common_pb2.TRUNCATION_POLICY_REJECT:
        return False
    return None
