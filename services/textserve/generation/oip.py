"""Open Inference Protocol adapter of the generation service.

Input `text_input` (BYTES [1] or [1, 1]: one prompt per request); output `text_output`
(BYTES [1]). Request parameters: `max_tokens` (int; 0 or absent uses the configured
default), `temperature`, `top_p`, `repetition_penalty` (double), `top_k`, `seed` (int),
`stop` (string: one stop sequence), `ignore_eos` and `skip_cache` (bool). Response
parameters: `finish_reason` ("length", "eos", "stop"), `prompt_tokens`,
`output_tokens`, `model_version` (the model version that served it), and `cached` on
ModelInfer. A request's `model_version` may pin one of the served versions; parameter
`routing_key` makes routing sticky.

ModelInfer answers with the whole completion (deterministic requests through the
response cache). ModelStreamInfer streams text deltas, one response per delta, the last
one carrying finish_reason; `stream=false` asks for the whole completion in one response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from textserve.core.errors import InvalidInput
from textserve.generation.params import GenerateParams
from textserve.generation.scheduler import FinishStatus
from textserve.generation.service import SERVICE, GenerationService
from textserve.oip.model import (
    BYTES,
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
from textserve.oip.parameters import ParamValue

TEXT_OUTPUT = "text_output"

_INPUTS = (TensorSpec(TEXT_INPUT, BYTES, (1,)),)
_OUTPUTS = (TensorSpec(TEXT_OUTPUT, BYTES, (1,)),)
_RENAMES = {
    "prompt": f"{input_field(TEXT_INPUT)}[0]",
    "params.max_new_tokens": "parameters[max_tokens]",
    "params.temperature": "parameters[temperature]",
    "params.top_k": "parameters[top_k]",
    "params.top_p": "parameters[top_p]",
    "params.repetition_penalty": "parameters[repetition_penalty]",
    "params.stop": "parameters[stop]",
}


def _output(text: str) -> list[OutputTensor]:
    return [OutputTensor(TEXT_OUTPUT, BYTES, (1,), [text])]


def _usage(finish: FinishStatus, prompt_tokens: int, output_tokens: int) -> dict[str, ParamValue]:
    return {"finish_reason": finish.value, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens}


class GenerationAdapter(ModelAdapter):
    """The causal LM as one protocol model."""

    def __init__(self, service: GenerationService) -> None:
        self.logic = service
        self.aliases = (SERVICE,)

    async def card(self, deadline: float | None) -> ModelCard:
        model = self.logic.info  # NotReady while loading
        versions = self.logic.versions
        return ModelCard(
            model.name,
            model.revision,
            model.backend,
            _INPUTS,
            _OUTPUTS,
            versions=tuple(versions.serving()) if versions.has_repository else (),
        )

    @staticmethod
    def _params(inputs: InferInputs) -> GenerateParams:
        prompts = inputs.text(TEXT_INPUT)
        if len(prompts) != 1:
            raise InvalidInput(
                input_field(TEXT_INPUT), f"takes one prompt per request (shape [1]); got {len(prompts)}"
            )
        params = inputs.parameters
        stop = params.get_str("stop", None)
        return GenerateParams(
            prompt=prompts[0],
            max_new_tokens=params.get_int("max_tokens", 0, minimum=0),
            temperature=params.get_float("temperature", 0.0),
            top_k=params.get_int("top_k", 0, minimum=0),
            top_p=params.get_float("top_p", 0.0),
            repetition_penalty=params.get_float("repetition_penalty", 0.0),
            stop=(stop,) if stop is not None else (),
            seed=params.get_int("seed", None, minimum=0, maximum=2**64 - 1),
            ignore_eos=params.get_bool("ignore_eos", False),
            skip_cache=params.get_bool("skip_cache", False),
            model_version=inputs.version,
            routing_key=params.get_str("routing_key", ""),
        )

    async def infer(self, inputs: InferInputs) -> InferOutcome:
        with fields_renamed(_RENAMES):
            result = await self.logic.generate(self._params(inputs), inputs.deadline)
        usage = _usage(result.finish, result.prompt_tokens, result.output_tokens)
        return InferOutcome(
            _output(result.text), {**usage, "cached": result.cached, "model_version": result.version}
        )

    async def stream(self, inputs: InferInputs) -> AsyncIterator[InferOutcome]:
        if not inputs.parameters.get_bool("stream", True):
            yield await self.infer(inputs)
            return
        with fields_renamed(_RENAMES):
            async for chunk in self.logic.stream(self._params(inputs), inputs.deadline):
                if chunk.finish is not None:
                    usage = _usage(chunk.finish, chunk.prompt_tokens, chunk.output_tokens)
                    usage["model_version"] = chunk.version
                    yield InferOutcome(_output(chunk.text), usage, final=True)
                elif chunk.text:
                    yield InferOutcome(_output(chunk.text), final=False)
