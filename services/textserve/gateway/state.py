"""What the routes of one gateway app share: its config, its backends and its serving objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from textserve.gateway.backends import Backends
from textserve.gateway.chat import ChatServing
from textserve.gateway.completions import CompletionServing
from textserve.gateway.config import GatewayConfig
from textserve.gateway.embeddings import EmbeddingServing
from textserve.gateway.feedback import FeedbackServing


@dataclass
class Gateway:
    """State of one gateway app (on `app.state.gateway`)."""

    config: GatewayConfig
    backends: Backends
    embeddings: EmbeddingServing = field(init=False)
    completions: CompletionServing = field(init=False)
    chat: ChatServing = field(init=False)
    feedback: FeedbackServing = field(init=False)
    started: int = field(default_factory=lambda: int(time.time()))
    """Unix time the app was built (`created` of the model cards)."""

    def __post_init__(self) -> None:
        self.embeddings = EmbeddingServing(self.backends)
        self.completions = CompletionServing(self.backends)
        self.chat = ChatServing(self.backends)
        self.feedback = FeedbackServing(self.backends)
