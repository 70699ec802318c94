"""Pooling of an encoder's token states into one vector per text (torch; traced into the ONNX graph).

Mean pooling averages the states of the real tokens only (the attention mask's ones), as
sentence-transformers' Pooling module does; CLS pooling takes the first token's state.
The ONNX export traces this function, so its code is part of the exported graph's cache
key (runtime/encoder.export_code_hash).
"""

from __future__ import annotations

from typing import Any, Literal

Pooling = Literal["mean", "cls"]


def pool_states(states: Any, attention_mask: Any, pooling: Pooling) -> Any:
    """(batch, tokens, dim) states and a (batch, tokens) 0/1 mask -> (batch, dim) vectors."""
    if pooling == "cls":
        return states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    summed = (states * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)
