"""Open Inference Protocol adapters of the tokenizer service: one model per tokenizer.

Each configured tokenizer is a protocol model named after its model; the default (first)
one also answers to "tokenizer". Input `text_input` (BYTES [N] or [N, 1]); outputs
`input_ids` (INT64 [N, L], each row right-padded with -1 to the longest) and
`input_lengths` (INT64 [N], the ids of each text). Request parameters:
`add_special_tokens` (bool) and `max_tokens` (int; 0 or absent does not cut). Response
parameter: `truncated_texts`.
"""

from __future__ import annotations

import numpy as np

from textserve.core.errors import NotReady
from textserve.oip.model import (
    BYTES,
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
)
from textserve.tokenizer.service import SERVICE, TokenizeParams, TokenizerInfo, TokenizerService

INPUT_IDS = "input_ids"
INPUT_LENGTHS = "input_lengths"
PADDING = -1
"""Fills input_ids rows past a text's length (never a real token id)."""
PLATFORM = "huggingface-tokenizers"

_INPUTS = (TensorSpec(TEXT_INPUT, BYTES, (-1,)),)
_OUTPUTS = (TensorSpec(INPUT_IDS, INT64, (-1, -1)), TensorSpec(INPUT_LENGTHS, INT64, (-1,)))
_RENAMES = {"texts": input_field(TEXT_INPUT), "max_tokens": "parameters[max_tokens]"}


class TokenizerAdapter(ModelAdapter):
    """The `index`-th configured tokenizer as one protocol model."""

    def __init__(self, service: TokenizerService, index: int) -> None:
        self.logic = service
        self.index = index
        self.aliases = (SERVICE,) if index == 0 else ()

    def _info(self) -> TokenizerInfo:
        models = self.logic.models  # NotReady while loading
        if self.index >= len(models):  # pragma: no cover - one adapter per configured model
            raise NotReady(f"tokenizer #{self.index} is not loaded")
        return models[self.index]

    async def card(self, deadline: float | None) -> ModelCard:
        info = self._info()
        return ModelCard(info.name, info.revision, PLATFORM, _INPUTS, _OUTPUTS)

    async def infer(self, inputs: InferInputs) -> InferOutcome:
        params = inputs.parameters
        request = TokenizeParams(
            texts=inputs.text(TEXT_INPUT),
            model=self._info().name,
            add_special_tokens=params.get_bool("add_special_tokens", False),
            max_tokens=params.get_int("max_tokens", 0, minimum=0),
        )
        with fields_renamed(_RENAMES):
            result = await self.logic.tokenize(request)
        lengths = np.array([len(e.ids) for e in result.encodings], dtype=np.int64)
        width = int(lengths.max(initial=0))
        ids = np.full((len(lengths), width), PADDING, dtype=np.int64)
        for row, encoding in enumerate(result.encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
        return InferOutcome(
            [
                OutputTensor(INPUT_IDS, INT64, ids.shape, ids),
                OutputTensor(INPUT_LENGTHS, INT64, lengths.shape, lengths),
            ],
            {"truncated_texts": sum(e.truncated for e in result.encodings)},
        )


def tokenizer_adapters(service: TokenizerService) -> list[TokenizerAdapter]:
    """One adapter per configured tokenizer, the default first."""
    return [TokenizerAdapter(service, index) for index in range(len(service.config.models))]
