"""The sequence_classification kind: the logits of a Hugging Face sequence-classification
model, run in-process by a runtime Encoder (`predict`), scored against the model's labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from textserve.classifier.scoring import Kind, LabelChoice, LabelInfo, Scores, check_fixed_labels
from textserve.classifier.vector_source import EncoderDescription, ModelHome, describe_encoder, encode_texts
from textserve.core.config import LimitsConfig
from textserve.core.errors import BackendFailure
from textserve.runtime.encoder_engine import Encoder

if TYPE_CHECKING:
    from textserve.classifier.zero_shot import Label


class SequenceClassificationScorer:
    """The logits of a sequence-classification model run by an in-process Encoder."""

    kind: Kind = "sequence_classification"

    def __init__(self, encoder: Encoder, limits: LimitsConfig, *, owned: bool = True) -> None:
        self.encoder = encoder
        self.limits = limits
        self.owned = owned
        self.location = "in-process" if owned else "embedding service in this process"

    @property
    def home(self) -> ModelHome:
        return "owned" if self.owned else "shared"

    async def start(self) -> None:
        if self.owned:
            await self.encoder.start()

    async def stop(self) -> None:
        if self.owned:
            await self.encoder.stop()

    async def describe(self, deadline: float | None) -> EncoderDescription:
        return describe_encoder(self.encoder)

    async def warm_up(self, deadline: float | None) -> None:
        describe_encoder(self.encoder)

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        return LabelInfo(model.labels)

    def temperature(self, requested: float) -> float:
        return 1.0

    def choose(
        self, labels: Sequence[Label], label_set: str, temperature: float, model: EncoderDescription
    ) -> LabelChoice:
        check_fixed_labels(self.kind, labels, label_set, temperature)
        return LabelChoice(model.labels, "model:" + ",".join(model.labels))

    async def score(
        self,
        texts: list[str],
        choice: LabelChoice,
        model: EncoderDescription,
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> Scores:
        encoded = await encode_texts(self.encoder, texts, deadline, truncate, self.limits)
        output = await self.encoder.predict(encoded.inputs, deadline, skip_cache=skip_cache)
        logits = np.stack(output.rows).astype(np.float32, copy=False)
        if logits.shape[1] != len(choice.names):
            raise BackendFailure(f"model gave {logits.shape[1]} logits for {len(choice.names)} labels")
        return Scores(
            logits,
            [len(item.ids) for item in encoded.inputs],
            [item.truncated for item in encoded.inputs],
            sum(output.cached),
            encoded.tokenize_seconds,
            output.queue_seconds,
            output.inference_seconds,
        )
