"""Writing a trained model directory all at once: stage beside the destination, rename at the end.

Everything (checkpoints, the final model, its metadata) is written under a hidden staging
folder next to the destination; only `commit()` renames the finished model into place, so
an error or an interrupt (the staging folder is removed on exit) leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

METADATA_FILE = "textserve-model.json"
"""Name of the metadata file written into every fine-tuned model directory."""


class OutputError(ValueError):
    """The destination cannot be written (exists, or is not a directory)."""


def check_destination(out: Path, overwrite: bool) -> None:
    """Fails early (before any training) when out exists and may not be replaced."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: exists and is not empty (give --overwrite to replace it)")


class StagedDirectory:
    """A staging folder for one output directory; use as a context manager, then commit()."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = out
        self.overwrite = overwrite
        self.root = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"

    @property
    def model_dir(self) -> Path:
        """Where the final model is written (renamed to out by commit)."""
        return self.root / "model"

    @property
    def scratch_dir(self) -> Path:
        """Checkpoints and other scratch files, removed with the staging folder."""
        return self.root / "scratch"

    def __enter__(self) -> StagedDirectory:
        check_destination(self.out, self.overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.model_dir.mkdir(parents=True)
        self.scratch_dir.mkdir()
        return self

    def commit(self) -> Path:
        """Moves the staged model into place (replacing out when allowed) and returns out."""
        check_destination(self.out, self.overwrite)
        replaced: Path | None = None
        if self.out.exists():
            replaced = self.root / "replaced"
            os.replace(self.out, replaced)
        os.replace(self.model_dir, self.out)
        return self.out

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (so staging folders are removed as
    on Ctrl-C); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_metadata(directory: Path, metadata: dict[str, Any]) -> Path:
    """Writes `textserve-model.json` into a model directory."""
    target = directory / METADATA_FILE
    target.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return target


def read_metadata(directory: Path) -> dict[str, Any]:
    """The metadata of a fine-tuned model directory."""
    data = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{directory / METADATA_FILE}: not a JSON object")
    return data
