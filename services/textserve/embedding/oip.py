"""Open Inference Protocol adapter of the embedding service.

Input `text_input` (BYTES [N] or [N, 1]); output `embedding` (FP32 [N, D]). Request
parameters: `normalize` (bool, unit-length vectors), `truncate` (bool; false rejects
overlong texts instead of cutting them; absent uses the service default) and
`skip_cache` (bool). Response parameters: `input_tokens`, `truncated_texts`,
`cached_texts`, `model_version` (the model version that served it). A request's
`model_version` may pin one of the served versions; parameter `routing_key` makes routing sticky.
"""

from __future__ import annotations

import numpy as np

from textserve.embedding.service import EmbeddingService, EmbedParams
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

EMBEDDING_OUTPUT = "embedding"


class EmbeddingAdapter(ModelAdapter):
    """The embedding model as one protocol model."""

    def __init__(self, service: EmbeddingService) -> None:
        self.logic = service
        self.aliases = (service.name,)

    async def card(self, deadline: float | None) -> ModelCard:
        info = self.logic.info  # NotReady while loading
        return ModelCard(
            name=info.name,
            version=info.revision,
            versions=tuple(self.logic.versions.serving()) if self.logic.versions.has_repository else (),
            platform=info.backend,
            inputs=(TensorSpec(TEXT_INPUT, BYTES, (-1,)),),
            outputs=(TensorSpec(EMBEDDING_OUTPUT, FP32, (-1, info.dimensions)),),
        )

    async def infer(self, inputs: InferInputs) -> InferOutcome:
        params = inputs.parameters
        texts = inputs.text(TEXT_INPUT)
        request = EmbedParams(
            texts=texts,
            normalize=params.get_bool("normalize", False),
            truncate=params.get_bool("truncate", None),
            skip_cache=params.get_bool("skip_cache", False),
            model_version=inputs.version,
            routing_key=params.get_str("routing_key", ""),
        )
        with fields_renamed({"texts": input_field(TEXT_INPUT)}):
            result = await self.logic.embed(request, inputs.deadline)
        dimensions = result.info.dimensions if result.info is not None else self.logic.info.dimensions
        vectors = (
            np.stack(result.vectors).astype(np.float32, copy=False)
            if result.vectors
            else np.zeros((0, dimensions), np.float32)
        )
        return InferOutcome(
            [OutputTensor(EMBEDDING_OUTPUT, FP32, (len(texts), dimensions), vectors)],
            {
                **text_counts(result.tokens, result.truncated, sum(result.cached)),
                "model_version": result.version,
            },
        )
