"""Checks textserve services: grpc.health.v1 Check, HTTP GET or TCP connect; exit 0 when all pass.

Used by the chart's `helm test` pod, which checks every service the way clients reach it
(headless Service names, TLS and mutual TLS when on; kubelet's gRPC probes can do neither).
Runs in the textserve image (grpcio and grpcio-health-checking are dependencies of the package).

Targets:
  grpc://HOST:PORT[/SERVICE]   grpc.health.v1.Health/Check; SERVICE empty asks for the whole server
  http://HOST:PORT[/PATH]      HTTP GET; any 2xx status passes
  tcp://HOST:PORT              a TCP connection opens

Exit status: 0 every target passed, 1 at least one failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import time
from urllib.parse import urlsplit


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "targets", nargs="+", help="grpc://host:port[/service], http://host:port/path or tcp://host:port"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt (default 5)")
    parser.add_argument("--retries", type=int, default=0, help="extra attempts per target after a failure")
    parser.add_argument("--retry-delay", type=float, default=2.0, help="seconds between attempts")
    parser.add_argument("--tls-ca", help="CA bundle (PEM): use TLS for grpc:// targets")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")
    parser.add_argument("--server-name", help="name expected in the server certificate (default: the host)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        parser.error("--tls-cert needs --tls-ca")
    for target in args.targets:
        parts = urlsplit(target)
        if parts.scheme not in ("grpc", "http", "tcp") or not parts.hostname or not parts.port:
            parser.error(
                f"bad target {target!r}: expected grpc://host:port[/service], http://host:port/path "
                "or tcp://host:port"
            )
    return args


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def check_grpc(host: str, port: int, service: str, args: argparse.Namespace) -> tuple[bool, str]:
    """(passed, detail) of one grpc.health.v1 Check."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = f"{host}:{port}"
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(args.tls_ca),
            private_key=_read(args.tls_key),
            certificate_chain=_read(args.tls_cert),
        )
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


def check_http(host: str, port: int, path: str, args: argparse.Namespace) -> tuple[bool, str]:
    """(passed, detail) of one HTTP GET."""
    connection = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        connection.request("GET", path or "/")
        status = connection.getresponse().status
    except OSError as error:
        return False, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return 200 <= status < 300, f"HTTP {status}"


def check_tcp(host: str, port: int, args: argparse.Namespace) -> tuple[bool, str]:
    """(passed, detail) of one TCP connect."""
    try:
        with socket.create_connection((host, port), timeout=args.timeout):
            return True, "connected"
    except OSError as error:
        return False, f"{type(error).__name__}: {error}"


def check(target: str, args: argparse.Namespace) -> tuple[bool, str]:
    """Runs the check a target names."""
    parts = urlsplit(target)
    host, port = str(parts.hostname), int(parts.port or 0)
    if parts.scheme == "grpc":
        return check_grpc(host, port, parts.path.lstrip("/"), args)
    if parts.scheme == "http":
        return check_http(host, port, parts.path, args)
    return check_tcp(host, port, args)


def main(argv: list[str] | None = None) -> int:
    """Checks every target (with retries) and prints one line per target."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    failed = 0
    for target in args.targets:
        for attempt in range(args.retries + 1):
            passed, detail = check(target, args)
            if passed or attempt == args.retries:
                break
            time.sleep(args.retry_delay)
        print(f"{'ok  ' if passed else 'FAIL'} {target} {detail}", flush=True)
        failed += not passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
