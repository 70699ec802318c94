"""Model versions of the classifier (lifecycle/): what one version folder holds, and the
runtime the version manager loads, warms and stops for it.

A version folder of the classifier's repository holds, by kind: sequence_classification, a
Hugging Face sequence-classification model directory; zero_shot, an embedding model
directory; linear_head, a head file (`head.safetensors`, or the one `*.safetensors` that is not
`model.safetensors`) written by `textserve train-classifier`, and optionally the embedding
model it was trained on (a config.json beside it; else the configured model). Each version
gets its own scorer (and in-process Encoder with its batcher and budget).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.scoring import Scorer
from textserve.classifier.vector_source import InProcessEncoder
from textserve.runtime.encoder_engine import Encoder
from textserve.runtime.model_files import model_name

HEAD_FILE = "head.safetensors"


def configured_model_name(config: ClassifierServiceConfig) -> str:
    """The model's name: model.name, else the folder name of model.path."""
    return config.model.name or model_name(config.model.path)


def head_file(folder: Path) -> Path:
    """The linear head of a version folder; FileNotFoundError naming the folder when absent."""
    named = folder / HEAD_FILE
    if named.is_file():
        return named
    heads = sorted(p for p in folder.glob("*.safetensors") if p.name != "model.safetensors")
    if len(heads) != 1:
        found = [p.name for p in heads]
        raise FileNotFoundError(
            f"version folder {folder} needs one linear head file ({HEAD_FILE}); found {found}"
        )
    return heads[0]


def version_config(config: ClassifierServiceConfig, folder: Path) -> ClassifierServiceConfig:
    """The classifier's config with the model (and head) of one version folder. Nothing is
    tuned at start for a version: it is warmed with the configured batcher's shapes."""
    update: dict[str, object] = {"tuned_budget_file": None, "autotune": False}
    name = configured_model_name(config)
    if config.kind != "linear_head" or (folder / "config.json").is_file():
        update["model"] = config.model.model_copy(update={"path": str(folder), "name": name})
    if config.kind == "linear_head":
        update["head_path"] = head_file(folder)
    return config.model_copy(update=update)


def owned_encoder(scorer: Scorer) -> Encoder | None:
    """The in-process Encoder a scorer owns (None: shared, or vectors from the embedding service)."""
    holder = scorer if isinstance(scorer, InProcessEncoder) else getattr(scorer, "source", None)
    if isinstance(holder, InProcessEncoder) and holder.owned:
        return holder.encoder
    return None


class ScorerVersion:
    """One classifier version as the version manager sees it: start, warm, stop its scorer."""

    def __init__(self, scorer: Scorer, starter: Callable[[Scorer], Awaitable[None]]) -> None:
        self.scorer = scorer
        self._starter = starter

    async def start(self) -> None:
        """Loads the scorer and checks it (head against model, default labels prepared)."""
        await self._starter(self.scorer)

    async def warm(self) -> None:
        """One forward per batch shape of its own in-process model (none to warm otherwise)."""
        encoder = owned_encoder(self.scorer)
        if encoder is not None:
            await encoder.warm()

    async def stop(self) -> None:
        await self.scorer.stop()
