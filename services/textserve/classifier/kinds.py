"""Builds the classifier's scorer of the configured kind, with the vector source or the
in-process Encoder it runs on (`classifier.kind`, `embedding_address`)."""

from __future__ import annotations

from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.linear_head import LinearHeadScorer
from textserve.classifier.merging import MergingVectorSource
from textserve.classifier.scoring import SERVICE, Scorer
from textserve.classifier.sequence_classification import SequenceClassificationScorer
from textserve.classifier.token_classification import TokenClassificationScorer
from textserve.classifier.vector_source import LocalVectorSource, RemoteVectorSource, VectorSource
from textserve.classifier.zero_shot import ZeroShotScorer
from textserve.runtime.encoder import Task
from textserve.runtime.encoder_engine import Encoder, EncoderOptions


def local_encoder(
    config: ClassifierServiceConfig,
    task: Task = "embedding",
    *,
    autotune: bool | None = None,
    version: str = "1",
) -> Encoder:
    """An in-process Encoder of the classifier's model (of model `version`, lifecycle/): its
    batcher and batch-budget tuning, no response cache (the classifier caches its logits itself)."""
    options = EncoderOptions(
        model=config.model,
        batcher=config.batcher,
        tuning=config.tuning,
        tuned_budget_file=config.tuned_budget_file,
        autotune=config.autotune if autotune is None else autotune,
    )
    return Encoder(options, None, None, service=SERVICE, task=task, version=version)


def build_source(
    config: ClassifierServiceConfig, token: str | None = None, version: str = "1"
) -> VectorSource:
    """The configured vector source: remote when embedding_address is set, else in-process."""
    if config.embedding_address:
        remote = RemoteVectorSource(config.embedding_address, config.client, token=token, service=SERVICE)
        if config.embedding_calls_in_flight == 0:
            return remote
        return MergingVectorSource(remote, config.embedding_calls_in_flight, config.embedding_call_max_texts)
    return LocalVectorSource(local_encoder(config, version=version), config.limits)


def build_scorer(
    config: ClassifierServiceConfig,
    source: VectorSource | None = None,
    token: str | None = None,
    encoder: Encoder | None = None,
    version: str = "1",
) -> Scorer:
    """The scorer of `config.kind`. `source` replaces the configured vector source; `encoder`
    is an Encoder another app of this process owns and shares (`serve all`); `version`: the
    model version it serves (its in-process Encoder's metrics label)."""
    if config.kind == "token_classification":
        if source is not None or encoder is not None:
            raise ValueError("a token_classification classifier runs its own model; it shares none")
        return TokenClassificationScorer(
            local_encoder(config, "token-classification", version=version), config.limits
        )
    if config.kind == "sequence_classification":
        if source is not None:
            raise ValueError(
                "a sequence_classification classifier runs its own model; it takes no vector source"
            )
        if encoder is not None:
            return SequenceClassificationScorer(encoder, config.limits, owned=False)
        return SequenceClassificationScorer(
            local_encoder(config, "sequence-classification", version=version), config.limits
        )
    if source is None:
        source = (
            LocalVectorSource(encoder, config.limits, owned=False)
            if encoder is not None
            else build_source(config, token, version)
        )
    if config.kind == "linear_head":
        assert config.head_path is not None  # enforced by the config
        return LinearHeadScorer(config.head_path, source)
    return ZeroShotScorer(config, source)
