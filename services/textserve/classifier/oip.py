"""Open Inference Protocol adapter of the classifier service.

Inputs: `text_input` (BYTES [N] or [N, 1]) and, for zero-shot classifiers, the optional
`labels` (BYTES [L]: label names the texts are scored against, instead of a configured
label set). Outputs, per text and best first as in the native API: `scores` (FP32
[N, K]), `labels` (BYTES [N, K], the label of each score) and `top_label` (BYTES [N]);
K is the number of labels, or `top_k` when set. Request parameters: `label_set`
(string), `temperature` (double), `top_k` (int), `truncate` (bool) and `skip_cache`
(bool). Response parameters: `input_tokens`, `truncated_texts`, `cached_texts`.
"""

from __future__ import annotations

import numpy as np

from textserve.classifier.service import SERVICE, ClassifierService, ClassifyParams
from textserve.classifier.zero_shot import Label
from textserve.oip.model import (
    BYTES,
    FP32,
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

LABELS_INPUT = "labels"
SCORES = "scores"
LABELS = "labels"
TOP_LABEL = "top_label"

_INPUTS = (TensorSpec(TEXT_INPUT, BYTES, (-1,)), TensorSpec(LABELS_INPUT, BYTES, (-1,), optional=True))
_OUTPUTS = (
    TensorSpec(SCORES, FP32, (-1, -1)),
    TensorSpec(LABELS, BYTES, (-1, -1)),
    TensorSpec(TOP_LABEL, BYTES, (-1,)),
)
_RENAMES = {
    "texts": input_field(TEXT_INPUT),
    "labels": input_field(LABELS_INPUT),
    "label_set": "parameters[label_set]",
    "temperature": "parameters[temperature]",
    "top_k": "parameters[top_k]",
}


class ClassifierAdapter(ModelAdapter):
    """The classifier as one protocol model, named after the model behind it."""

    def __init__(self, service: ClassifierService) -> None:
        self.logic = service
        self.aliases = (SERVICE,)

    async def card(self, deadline: float | None) -> ModelCard:
        model = (await self.logic.describe(deadline)).model  # NotReady while loading
        versions = self.logic.versions
        served = tuple(versions.serving()) if versions.has_repository else ()
        return ModelCard(model.name, model.revision, model.backend, _INPUTS, _OUTPUTS, served)

    async def infer(self, inputs: InferInputs) -> InferOutcome:
        params = inputs.parameters
        texts = inputs.text(TEXT_INPUT)
        request = ClassifyParams(
            texts=texts,
            labels=[Label(name) for name in inputs.text(LABELS_INPUT)],
            label_set=params.get_str("label_set", ""),
            temperature=params.get_float("temperature", 0.0),
            top_k=params.get_int("top_k", 0),
            truncate=params.get_bool("truncate", None),
            skip_cache=params.get_bool("skip_cache", False),
            model_version=inputs.version,
            routing_key=params.get_str("routing_key", ""),
        )
        with fields_renamed(_RENAMES):
            result = await self.logic.classify(request, inputs.deadline)
        rows = result.classifications
        width = len(rows[0].scores) if rows else 0
        scores = np.array([[score for _, score in row.scores] for row in rows], dtype=np.float32)
        labels = [label for row in rows for label, _ in row.scores]
        return InferOutcome(
            [
                OutputTensor(SCORES, FP32, (len(rows), width), scores.reshape(len(rows), width)),
                OutputTensor(LABELS, BYTES, (len(rows), width), labels),
                OutputTensor(TOP_LABEL, BYTES, (len(rows),), [row.top_label for row in rows]),
            ],
            {**text_counts(result.tokens, result.truncated, result.cached), "model_version": result.version},
        )
