"""The client commands' --tls* / --token-file options against a real mutual-TLS + bearer-auth server.

`textserve.cli.main` runs its own event loop (asyncio.run), so it runs in a worker thread
while the server keeps serving on the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textserve.cli import main as cli_main
from textserve.core.config import AuthConfig, TlsConfig
from textserve.settings import load_settings
from textserve.transport.server import ServiceHost

from tests.pki import Pki, make_pki
from tests.support import embedding_config, loopback_server, model_config, start_host

TOKEN = "cli-token-4c9e71"
MODEL_NAME = "cli-secured-model"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("cli-pki"), "cli")


@pytest.fixture(scope="module")
async def secured_host(pki: Pki) -> AsyncIterator[ServiceHost]:
    """Mutual TLS and bearer-token auth both required."""
    from textserve.embedding.app import EmbeddingApp

    tls = TlsConfig(
        enabled=True,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        ca_file=pki.ca,
        require_client_cert=True,
    )
    auth = AuthConfig(enabled=True, tokens=[TOKEN])  # type: ignore[list-item]
    config = embedding_config(server=loopback_server(tls=tls, auth=auth), model=model_config(name=MODEL_NAME))
    host = await start_host([EmbeddingApp(config)])
    yield host
    await host.stop(grace=1.0)


def _embed_args(host: ServiceHost, pki: Pki, *extra: str) -> list[str]:
    return [
        "embed",
        "secured hello",
        "--address",
        f"127.0.0.1:{host.port_of('embedding')}",
        "--timeout",
        "10",
        "--tls-ca",
        str(pki.ca),
        "--tls-cert",
        str(pki.client.cert),
        "--tls-key",
        str(pki.client.key),
        *extra,
    ]


async def test_embed_with_mtls_and_token_file(
    secured_host: ServiceHost, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    args = _embed_args(secured_host, pki, "--tls", "--token-file", str(token_file))
    assert await asyncio.to_thread(cli_main, args) == 0
    out = capsys.readouterr().out
    assert f"model {MODEL_NAME}" in out and "dim=384" in out


async def test_embed_with_token_from_environment(
    secured_host: ServiceHost, pki: Pki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTSERVE_CLIENT_TOKEN", TOKEN)
    assert await asyncio.to_thread(cli_main, _embed_args(secured_host, pki)) == 0
    assert f"model {MODEL_NAME}" in capsys.readouterr().out


async def test_embed_without_token_is_unauthenticated(
    secured_host: ServiceHost, pki: Pki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TEXTSERVE_CLIENT_TOKEN", raising=False)
    assert await asyncio.to_thread(cli_main, _embed_args(secured_host, pki)) != 0
    captured = capsys.readouterr()
    assert "UNAUTHENTICATED" in captured.err
    assert MODEL_NAME not in captured.out


def test_client_certificate_without_key_is_a_usage_error(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["embed", "x", "--address", "127.0.0.1:1", "--tls-cert", str(pki.client.cert)])
    assert exited.value.code == 2
    assert "--tls-cert and --tls-key must be given together" in capsys.readouterr().err


def test_client_token_variable_is_not_a_setting() -> None:
    """Exporting TEXTSERVE_CLIENT_TOKEN for the CLI must not break `textserve serve`'s settings."""
    load_settings(environ={"TEXTSERVE_CLIENT_TOKEN": TOKEN})
