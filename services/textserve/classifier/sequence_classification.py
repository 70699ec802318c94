"""The sequence_classification kind: the logits of a Hugging Face sequence-classification
model, run in-process by a runtime Encoder (`predict`), scored against the model's labels."""

from __future__ import annotations

import numpy as np

from textserve.classifier.scoring import (
    FixedLabels,
    Kind,
    LabelChoice,
    LabelInfo,
    ScoreCall,
    Scores,
    scores_of,
)
from textserve.classifier.vector_source import (
    EncoderDescription,
    InProcessEncoder,
    ModelHome,
    describe_encoder,
)
from textserve.core.errors import BackendFailure


class SequenceClassificationScorer(FixedLabels, InProcessEncoder):
    """The logits of a sequence-classification model run by an in-process Encoder."""

    kind: Kind = "sequence_classification"

    @property
    def home(self) -> ModelHome:
        return "owned" if self.owned else "shared"

    async def warm_up(self, deadline: float | None) -> None:
        describe_encoder(self.encoder)

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        return LabelInfo(model.labels)

    def fixed_choice(self, model: EncoderDescription) -> LabelChoice:
        return LabelChoice(model.labels, "model:" + ",".join(model.labels))

    async def score(self, call: ScoreCall, choice: LabelChoice, model: EncoderDescription) -> Scores:
        rows = await self.run("predict", call.texts, call.deadline, call.truncate, call.skip_cache)
        logits = rows.values.astype(np.float32, copy=False)
        if logits.shape[1] != len(choice.names):
            raise BackendFailure(f"model gave {logits.shape[1]} logits for {len(choice.names)} labels")
        return scores_of(logits, rows)
