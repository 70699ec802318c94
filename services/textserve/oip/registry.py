"""Finds the model a request names: by model name or service alias, and by version.

A model answers to its own name ("all-MiniLM-L6-v2") and to its service's name
("embedding"), so clients can address a service without knowing which model it was
configured with. Versions: "" (the server's choice), the model's revision, or one of the
model versions it serves (lifecycle/: the request is pinned to it); any other version is
NOT_FOUND. A model's own name is known only once it has loaded; until then an
unknown name is UNAVAILABLE (it may be the model still loading), not NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Sequence

from textserve.core.errors import InvalidInput, NotFound, NotReady
from textserve.oip.model import ModelAdapter, ModelCard


class ModelRegistry:
    """The models one server answers for."""

    def __init__(self, adapters: Sequence[ModelAdapter]) -> None:
        aliases = [alias for adapter in adapters for alias in adapter.aliases]
        if len(set(aliases)) != len(aliases):
            raise ValueError(f"two models share an alias: {aliases}")
        self.adapters = list(adapters)

    async def cards(self, deadline: float | None) -> list[tuple[ModelAdapter, ModelCard | None]]:
        """Every adapter with its card, or None while its model loads."""
        found: list[tuple[ModelAdapter, ModelCard | None]] = []
        for adapter in self.adapters:
            try:
                found.append((adapter, await adapter.card(deadline)))
            except NotReady:
                found.append((adapter, None))
        return found

    async def ready(self, deadline: float | None) -> bool:
        """True when every model is loaded."""
        return all(card is not None for _, card in await self.cards(deadline))

    async def find(
        self, name: str, version: str, deadline: float | None, field: str = "model_name"
    ) -> tuple[ModelAdapter, ModelCard]:
        """The adapter and card for name and version; InvalidInput, NotFound or NotReady otherwise."""
        cards = await self.cards(deadline)
        if not name:
            raise InvalidInput(field, "is required; this server serves " + _describe(cards))
        match = _match(name, cards)
        if match is None:
            if any(card is None for _, card in cards):
                raise NotReady(f"model {name!r} is not known yet; models are still loading")
            raise NotFound(f"unknown model {name!r}; this server serves {_describe(cards)}")
        adapter, card = match
        if card is None:
            raise NotReady(f"model {name!r} is still loading")
        if version and version != card.version and version not in card.versions:
            served = f"version {card.version!r}"
            if card.versions:
                served = f"versions {[card.version, *card.versions]}"
            raise NotFound(f"model {name!r} has no version {version!r}; it serves {served}")
        return adapter, card


def _match(
    name: str, cards: list[tuple[ModelAdapter, ModelCard | None]]
) -> tuple[ModelAdapter, ModelCard | None] | None:
    for adapter, card in cards:
        if name in adapter.aliases:
            return adapter, card
    for adapter, card in cards:
        if card is not None and name == card.name:
            return adapter, card
    return None


def _describe(cards: list[tuple[ModelAdapter, ModelCard | None]]) -> str:
    """The served models, for error messages."""
    names = []
    for adapter, card in cards:
        aliases = ", ".join(repr(alias) for alias in adapter.aliases)
        if card is None:
            names.append(f"{aliases or 'a model'} (loading)")
        else:
            names.append(f"{card.name!r} (alias {aliases})" if aliases else repr(card.name))
    return ", ".join(names) or "no models"
