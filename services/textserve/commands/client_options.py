"""Connection options shared by the client commands (`textserve embed|classify|tokenize|generate`).

`add_client_options(parser)` adds TLS / mutual TLS and bearer-token flags;
`open_client(args, service)` turns them into the public client (textserve.client) the
commands call through; `call_client` makes a command's one call with it and prints a failure
as `error: CODE: details`. `open_client_channel(args, address)` opens a bare channel with
`client.channels.open_channel` (the same channel services use between them).

The token comes from --token-file, else from the TEXTSERVE_CLIENT_TOKEN environment variable
(read by `core.config.cli_client_token`, the only module that reads the environment, and only
when the channel is opened, so the secret never sits in argparse defaults or `--help`).
A problem with these options prints `error: ...` and exits with status 2, like a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc
from pydantic import SecretStr, ValidationError

from textserve.client.api import AsyncTextserveClient
from textserve.client.channels import open_channel
from textserve.client.policy import ClientOptions
from textserve.client.tokens import read_token_file
from textserve.core.config import CLIENT_TOKEN_VARIABLE, ClientConfig, TlsConfig, cli_client_token
from textserve.core.errors import TextserveError
from textserve.transport.status import status_of

T = TypeVar("T")


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Adds --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name and --token-file."""
    group = parser.add_argument_group("connection security")
    group.add_argument(
        "--tls", action="store_true", help="connect over TLS (implied by any other --tls-* option)"
    )
    group.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA bundle (PEM) that verifies the server")
    group.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM) for mutual TLS"
    )
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="private key (PEM) of --tls-cert")
    group.add_argument(
        "--tls-server-name", metavar="NAME", help="expected server name when it differs from the address host"
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the bearer token (default: the {CLIENT_TOKEN_VARIABLE} environment variable)",
    )


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The ClientConfig the --tls* options describe (plaintext without any of them)."""
    files = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    enabled = bool(args.tls or args.tls_server_name or any(files.values()))
    if not enabled:
        return ClientConfig()
    if (args.tls_cert is None) != (args.tls_key is None):
        _fail("--tls-cert and --tls-key must be given together")
    for flag, path in files.items():
        if path is not None and not path.is_file():
            _fail(f"{flag} {path}: no such file")
    try:
        tls = TlsConfig(
            enabled=True,
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            server_name_override=args.tls_server_name or None,
        )
    except ValidationError as exc:  # pragma: no cover - the checks above cover TlsConfig's rules
        _fail(str(exc))
    return ClientConfig(tls=tls)


def client_token(args: argparse.Namespace) -> SecretStr | None:
    """The bearer token: the contents of --token-file, else TEXTSERVE_CLIENT_TOKEN, else None."""
    if args.token_file is None:
        return cli_client_token()
    try:
        token = read_token_file(args.token_file)
    except OSError as exc:
        _fail(f"--token-file {args.token_file}: {exc.strerror or exc}")
    if not token:
        _fail(f"--token-file {args.token_file} is empty")
    return SecretStr(token)


def open_client_channel(args: argparse.Namespace, address: str) -> grpc.aio.Channel:
    """A channel to `address` with the TLS settings and bearer token of the parsed options."""
    return open_channel(address, client_config(args), token=client_token(args))


def open_client(args: argparse.Namespace, service: str) -> AsyncTextserveClient:
    """The public client towards `service` at --address, with the TLS and token options; a
    command fails fast (no waiting for a server that is down, no retries past gRPC's few)."""
    token = client_token(args)
    options = ClientOptions(
        timeout_s=args.timeout,
        token=token.get_secret_value() if token is not None else None,
        tls=client_config(args).tls,
        wait_for_ready=False,
        retry_within_deadline=False,
        merge=False,
    )
    return AsyncTextserveClient(**{service: args.address}, options=options)


def print_error(error: TextserveError) -> None:
    """`error: CODE: details` of a failed call (the status the server answered, when it did)."""
    cause = error.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        print(f"error: {cause.code().name}: {cause.details()}", file=sys.stderr)
    else:
        print(f"error: {status_of(error).name}: {error.message}", file=sys.stderr)


async def call_client(
    args: argparse.Namespace, service: str, call: Callable[[AsyncTextserveClient], Awaitable[T]]
) -> T | None:
    """Runs `call` with the client of `service` (see `open_client`); a failure is printed as
    `error: CODE: details` and answers None."""
    async with open_client(args, service) as client:
        try:
            return await call(client)
        except TextserveError as error:
            print_error(error)
            return None
