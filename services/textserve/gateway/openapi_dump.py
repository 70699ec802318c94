"""Writes the gateway's OpenAPI document to docs/openapi.json (`make openapi`), or checks it.

FastAPI generates the document from the routes and wire types; the committed copy lets
clients and reviewers see the HTTP API without running anything. `--check` exits 1 when
the committed file differs from what the code generates (tests/unit/test_gateway_openapi.py
does the same), so the file cannot silently go stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PATH = REPO_ROOT / "docs" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the gateway app (no backends are contacted)."""
    from textserve.gateway.app import create_app

    document: dict[str, Any] = create_app().openapi()
    return document


def render(document: dict[str, Any]) -> str:
    """Stable text of a document: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH, help="output file")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        current = args.path.read_text() if args.path.is_file() else ""
        if current != text:
            print(f"{args.path} is stale; run `make openapi`", file=sys.stderr)
            return 1
        print(f"{args.path} is up to date")
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
