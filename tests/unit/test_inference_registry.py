"""Model lookup of the Open Inference Protocol front: names, aliases, versions, loading."""

from __future__ import annotations

import pytest
from textserve.core.errors import InvalidInput, NotFound, NotReady
from textserve.oip.model import BYTES, InferInputs, InferOutcome, ModelAdapter, ModelCard, TensorSpec
from textserve.oip.registry import ModelRegistry


class StaticModel(ModelAdapter):
    """A model whose card is fixed, or that is still loading (card None)."""

    def __init__(self, card: ModelCard | None, aliases: tuple[str, ...] = ()) -> None:
        self._card = card
        self.aliases = aliases

    async def card(self, deadline: float | None) -> ModelCard:
        if self._card is None:
            raise NotReady("still loading")
        return self._card

    async def infer(self, inputs: InferInputs) -> InferOutcome:  # pragma: no cover - not called
        return InferOutcome([])


def card(name: str, version: str = "r1") -> ModelCard:
    spec = (TensorSpec("text_input", BYTES, (-1,)),)
    return ModelCard(name, version, "test", spec, spec)


async def test_name_alias_and_version() -> None:
    registry = ModelRegistry([StaticModel(card("mini"), ("embedding",)), StaticModel(card("other", ""))])
    assert await registry.ready(None)
    for name, version in [("mini", ""), ("mini", "r1"), ("embedding", "r1")]:
        _, found = await registry.find(name, version, None)
        assert found.name == "mini"
    _, other = await registry.find("other", "", None)
    assert other.name == "other"
    with pytest.raises(NotFound, match="model 'mini' has no version 'r2'; it serves version 'r1'"):
        await registry.find("mini", "r2", None)
    with pytest.raises(
        NotFound, match="unknown model 'x'; this server serves 'mini' \\(alias 'embedding'\\), 'other'"
    ):
        await registry.find("x", "", None)
    with pytest.raises(InvalidInput, match=r"^name: is required"):
        await registry.find("", "", None, field="name")


async def test_loading_models_are_unavailable_not_missing() -> None:
    registry = ModelRegistry([StaticModel(None, ("generation",)), StaticModel(card("ready"))])
    assert not await registry.ready(None)
    with pytest.raises(NotReady, match="'generation' is still loading"):
        await registry.find("generation", "", None)
    with pytest.raises(NotReady, match="not known yet"):
        await registry.find("its-real-name", "", None)
    _, found = await registry.find("ready", "", None)
    assert found.name == "ready"


def test_aliases_must_be_unique() -> None:
    with pytest.raises(ValueError, match="share an alias"):
        ModelRegistry([StaticModel(None, ("a",)), StaticModel(None, ("a",))])
