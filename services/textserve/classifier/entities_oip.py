"""Open Inference Protocol adapter of a token_classification classifier (ExtractEntities).

Input: `text_input` (BYTES [N] or [N, 1]). Outputs, flat over every entity of every text in
text order, so that a Triton client reads them as plain tensors: `entity_count` (INT64 [N],
entities per text: text i owns the next entity_count[i] rows), `entity_label` (BYTES [E]),
`entity_score` (FP32 [E]), `entity_start` and `entity_end` (INT64 [E], code points of the
text) and `entity_text` (BYTES [E]). Request parameters: `aggregation_strategy` (string),
`stride` (int) and `skip_cache` (bool). Response parameters: `input_tokens`,
`truncated_texts` (0: long texts are windowed, never cut), `cached_texts`.
"""

from __future__ import annotations

import numpy as np

from textserve.classifier.entities import EntitiesParams
from textserve.classifier.service import SERVICE, ClassifierService
from textserve.oip.model import (
    BYTES,
    FP32,
    INT64,
    TEXT_INPUT,
    InferInputs,
    InferOutcome,
    ModelAdapter,
    ModelCard,
    OutputTensor,
    TensorSpec,
    fields_renamed,
    input_field,
    text_counts,
)

COUNT = "entity_count"
LABEL = "entity_label"
SCORE = "entity_score"
START = "entity_start"
END = "entity_end"
TEXT = "entity_text"

_INPUTS = (TensorSpec(TEXT_INPUT, BYTES, (-1,)),)
_OUTPUTS = (
    TensorSpec(COUNT, INT64, (-1,)),
    TensorSpec(LABEL, BYTES, (-1,)),
    TensorSpec(SCORE, FP32, (-1,)),
    TensorSpec(START, INT64, (-1,)),
    TensorSpec(END, INT64, (-1,)),
    TensorSpec(TEXT, BYTES, (-1,)),
)
_RENAMES = {
    "texts": input_field(TEXT_INPUT),
    "aggregation_strategy": "parameters[aggregation_strategy]",
    "stride": "parameters[stride]",
}


class EntitiesAdapter(ModelAdapter):
    """The entity extractor as one protocol model, named after the model behind it."""

    def __init__(self, service: ClassifierService) -> None:
        self.logic = service
        self.aliases = (SERVICE,)

    async def card(self, deadline: float | None) -> ModelCard:
        model = (await self.logic.describe(deadline)).model  # NotReady while loading
        return ModelCard(model.name, model.revision, model.backend, _INPUTS, _OUTPUTS)

    async def infer(self, inputs: InferInputs) -> InferOutcome:
        params = inputs.parameters
        request = EntitiesParams(
            texts=inputs.text(TEXT_INPUT),
            aggregation_strategy=params.get_str("aggregation_strategy", ""),
            stride=params.get_int("stride", 0),
            skip_cache=params.get_bool("skip_cache", False),
        )
        with fields_renamed(_RENAMES):
            result = await self.logic.extract_entities(request, inputs.deadline)
        found = [entity for item in result.results for entity in item.entities]
        total = len(found)
        return InferOutcome(
            [
                OutputTensor(
                    COUNT,
                    INT64,
                    (len(result.results),),
                    np.array([len(r.entities) for r in result.results], np.int64),
                ),
                OutputTensor(LABEL, BYTES, (total,), [e.label for e in found]),
                OutputTensor(SCORE, FP32, (total,), np.array([e.score for e in found], np.float32)),
                OutputTensor(START, INT64, (total,), np.array([e.start for e in found], np.int64)),
                OutputTensor(END, INT64, (total,), np.array([e.end for e in found], np.int64)),
                OutputTensor(TEXT, BYTES, (total,), [e.text for e in found]),
            ],
            text_counts(
                [item.input_tokens for item in result.results], [False] * len(result.results), result.cached
            ),
        )
