"""What the inference servicer needs from a model service: the ModelAdapter contract.

An adapter maps the protocol's view of a model (named tensors in, named tensors out,
request parameters) onto one service's logic object (EmbeddingService, ...). It sees no
protobuf: the servicer decodes inputs into `InferInputs` and encodes `InferOutcome`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from textserve.core.errors import InvalidInput, TextserveError
from textserve.oip.parameters import Parameters, ParamValue

BYTES = "BYTES"
"""Datatype of text tensors (UTF-8 strings)."""
FP32 = "FP32"
"""Datatype of vectors and scores."""
INT64 = "INT64"
"""Datatype of token ids and counts."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, datatype and shape of one input or output; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    """Inputs only: the request may leave it out."""

    def describe(self) -> str:
        """ "name (DATATYPE [d0, d1])", for error messages."""
        return f"{self.name} ({self.datatype} {list(self.shape)})"


@dataclass(frozen=True)
class OutputTensor:
    """One output: FP32/INT64 values as an array of `shape`, or BYTES values as a flat sequence."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | Sequence[bytes | str]


@dataclass
class InferInputs:
    """A decoded request: the text of each BYTES input, the parameters and the deadline."""

    texts: dict[str, list[str]]
    parameters: Parameters
    deadline: float | None = None
    version: str = ""
    """The model version the request pinned (one of the card's `versions`), or "" (routing decides)."""

    def text(self, name: str) -> list[str]:
        """The texts of input `name` (empty when an optional input was left out)."""
        return self.texts.get(name, [])


@dataclass
class InferOutcome:
    """The outputs of one response (or one streamed part) and its response parameters."""

    outputs: list[OutputTensor]
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    final: bool = True
    """Streams only: this is the last part of the answer."""


@dataclass(frozen=True)
class ModelCard:
    """What ModelMetadata tells about a loaded model."""

    name: str
    """The model's name ("all-MiniLM-L6-v2")."""
    version: str
    """The model's revision, the one version served."""
    platform: str
    """The backend that runs it ("onnxruntime", "torch")."""
    inputs: tuple[TensorSpec, ...]
    """The inputs it takes."""
    outputs: tuple[TensorSpec, ...]
    """The outputs it returns, in response order."""
    versions: tuple[str, ...] = ()
    """Model versions (lifecycle/) a request may pin with model_version, besides `version`."""


class ModelAdapter(abc.ABC):
    """One model as the Open Inference Protocol sees it, backed by a service's logic."""

    aliases: tuple[str, ...] = ()
    """Other names the model answers to, usually its service's name ("embedding")."""

    @abc.abstractmethod
    async def card(self, deadline: float | None) -> ModelCard:
        """Name, version and tensors of the model; raises NotReady while it loads."""

    @abc.abstractmethod
    async def infer(self, inputs: InferInputs) -> InferOutcome:
        """One request through the service's validation, batcher and cache."""

    async def stream(self, inputs: InferInputs) -> AsyncIterator[InferOutcome]:
        """Streamed answer (ModelStreamInfer); models without streaming answer once."""
        yield await self.infer(inputs)


TEXT_INPUT = "text_input"
"""The input every textserve model takes its texts (or prompt) from."""


def input_field(name: str) -> str:
    """How errors name an input: inputs[name]."""
    return f"inputs[{name}]"


def rename_fields(error: TextserveError, renames: Mapping[str, str]) -> TextserveError:
    """The InvalidInput of a service with its field renamed to what a protocol client sent.

    The services name their own fields ("texts[3]", "params.top_p"); a protocol client
    knows inputs and parameters ("inputs[text_input][3]", "parameters[top_p]"). `renames`
    maps a service field (and everything under it) to the protocol's name. Other errors,
    and fields without a rename, are returned unchanged.
    """
    if not isinstance(error, InvalidInput):
        return error
    for old, new in renames.items():
        if error.field == old or error.field.startswith((f"{old}[", f"{old}.")):
            return InvalidInput(new + error.field[len(old) :], error.problem)
    return error


@contextlib.contextmanager
def fields_renamed(renames: Mapping[str, str]) -> Iterator[None]:
    """Re-raises the error kinds of a service call with `rename_fields` applied."""
    try:
        yield
    except TextserveError as error:
        raise rename_fields(error, renames) from None


def text_counts(tokens: Sequence[int], truncated: Sequence[bool], cached: int) -> dict[str, ParamValue]:
    """The response parameters of a call over texts: input_tokens, truncated_texts, cached_texts."""
    return {"input_tokens": sum(tokens), "truncated_texts": sum(truncated), "cached_texts": cached}
