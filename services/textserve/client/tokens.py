"""Where the bearer token a client sends comes from: a configured secret or a token file.

The token file is read here and nowhere else (services' `auth.client_token_file`, the
gateway's `client_token_file`, the CLI's `--token-file`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from textserve.core.config import AuthConfig


def read_token_file(path: Path) -> str:
    """The token in `path`, without surrounding whitespace ("" for an empty file); OSError if unreadable."""
    return path.read_text().strip()


def resolve_token(token: SecretStr | None, token_file: Path | None) -> str | None:
    """`token` when set, else the contents of `token_file`; None when neither gives a token."""
    if token is not None:
        return token.get_secret_value() or None
    if token_file is not None:
        return read_token_file(token_file) or None
    return None


def client_token(auth: AuthConfig) -> str | None:
    """The token a service sends to other services: auth.client_token, else auth.client_token_file."""
    return resolve_token(auth.client_token, auth.client_token_file)
