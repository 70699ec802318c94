"""The token_classification kind: a Hugging Face token-classification model run in-process by
a runtime Encoder (`token_logits`). Its answers are entities (ExtractEntities, entities.py);
Classify on it is INVALID_ARGUMENT. As a Scorer it gives the lifecycle, the description and
the labels (the model's token labels) that ClassifierInfo reports."""

from __future__ import annotations

from textserve.classifier.scoring import FixedLabels, Kind, LabelChoice, LabelInfo, ScoreCall, Scores
from textserve.classifier.vector_source import (
    EncoderDescription,
    InProcessEncoder,
    ModelHome,
    describe_encoder,
)
from textserve.core.errors import InvalidInput


class TokenClassificationScorer(FixedLabels, InProcessEncoder):
    """A token-classification model run by an in-process Encoder (always its own)."""

    kind: Kind = "token_classification"

    @property
    def home(self) -> ModelHome:
        return "owned"

    async def warm_up(self, deadline: float | None) -> None:
        describe_encoder(self.encoder)

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        return LabelInfo(model.labels)

    def fixed_choice(self, model: EncoderDescription) -> LabelChoice:
        raise InvalidInput(
            "texts",
            "this classifier (kind=token_classification) tags tokens: call ExtractEntities, not Classify",
        )

    async def score(self, call: ScoreCall, choice: LabelChoice, model: EncoderDescription) -> Scores:
        raise InvalidInput(
            "texts", "this classifier (kind=token_classification) answers ExtractEntities only"
        )
