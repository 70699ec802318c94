"""`textserve serve <service>|all`: runs services until SIGTERM, then drains."""

from __future__ import annotations

import argparse
import logging
import sys

from textserve.commands.settings_option import settings_or_report
from textserve.core.logging import setup_logging
from textserve.core.metrics import start_metrics_server
from textserve.settings import dump_settings

log = logging.getLogger("textserve.serve")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `serve` and `config`."""
    serve = subparsers.add_parser("serve", help="run one service, or all of them, in this process")
    serve.add_argument(
        "services", nargs="+", help="tokenizer, embedding, classifier, generation, gateway or all"
    )
    serve.add_argument("--config", help="YAML config file (else TEXTSERVE_CONFIG_FILE)")
    serve.set_defaults(handler=_serve)
    show = subparsers.add_parser("config", help="print the effective configuration (secrets masked)")
    show.add_argument("--config", help="YAML config file")
    show.set_defaults(handler=_show_config)


def _show_config(args: argparse.Namespace) -> int:
    import yaml

    settings = settings_or_report(args.config)
    if settings is None:
        return 2
    print(yaml.safe_dump(dump_settings(settings), sort_keys=False))
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from textserve.apps import build_apps
    from textserve.transport.server import ServiceHost, StartFailed

    settings = settings_or_report(args.config)
    if settings is None:
        return 2
    setup_logging(settings.log.level, settings.log.format)
    if settings.metrics.enabled:
        port = start_metrics_server(settings.metrics.host, settings.metrics.port)
        log.info("metrics on /metrics", extra={"port": port})
    # The HTTP gateway is no gRPC ServiceApp: it runs on uvicorn in this loop, beside the servers.
    grpc_names = [name for name in args.services if name != "gateway"]
    with_gateway = "gateway" in args.services or "all" in args.services
    try:
        apps = build_apps(grpc_names, settings) if grpc_names else []
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    host = ServiceHost(apps)
    try:
        if with_gateway:
            from textserve.gateway.server import GatewayServer, serve_with_grpc

            await serve_with_grpc(host, GatewayServer(settings.gateway))
        else:
            await host.serve_forever()
    except StartFailed as exc:
        # Logged with its traceback where it happened; everything is stopped by now.
        print(f"textserve serve: {exc}", file=sys.stderr)
        return 1
    return 0
