"""files/grpc_health_check.py (helm test pod, TLS exec probes) against real gRPC and HTTP servers."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.promql import CHART_DIR

SCRIPT = CHART_DIR / "files" / "grpc_health_check.py"
SERVING = "textserve.v1.EmbeddingService"
NOT_SERVING = "textserve.v1.GenerationService"


@dataclass
class HealthServer:
    """A gRPC server with grpc.health.v1 on loopback."""

    port: int
    server: grpc.Server


def _serve_health(credentials: grpc.ServerCredentials | None = None) -> HealthServer:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SERVING, health_pb2.HealthCheckResponse.SERVING)
    servicer.set(NOT_SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return HealthServer(port, server)


@pytest.fixture(scope="module")
def plain() -> Iterator[HealthServer]:
    running = _serve_health()
    yield running
    running.server.stop(None)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--timeout", "3", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_serving_services_pass(plain: HealthServer) -> None:
    result = _run(f"grpc://127.0.0.1:{plain.port}", f"grpc://127.0.0.1:{plain.port}/{SERVING}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SERVING") == 2


def test_not_serving_or_unknown_fails(plain: HealthServer) -> None:
    result = _run(f"grpc://127.0.0.1:{plain.port}/{SERVING}", f"grpc://127.0.0.1:{plain.port}/{NOT_SERVING}")
    assert result.returncode == 1
    assert f"FAIL grpc://127.0.0.1:{plain.port}/{NOT_SERVING} NOT_SERVING" in result.stdout
    result = _run(f"grpc://127.0.0.1:{plain.port}/textserve.v1.NoSuchService")
    assert result.returncode == 1 and "NOT_FOUND" in result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_fails_after_retries() -> None:
    result = _run("--retries", "1", "--retry-delay", "0.1", f"grpc://127.0.0.1:{_free_port()}")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stdout


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_and_tcp_targets() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert _run(f"http://127.0.0.1:{port}/health", f"tcp://127.0.0.1:{port}").returncode == 0
        failed = _run(f"http://127.0.0.1:{port}/broken")
        assert failed.returncode == 1 and "HTTP 503" in failed.stdout
        assert _run(f"tcp://127.0.0.1:{_free_port()}").returncode == 1
    finally:
        server.shutdown()


def test_bad_arguments_exit_2() -> None:
    assert _run("ftp://x:1").returncode == 2
    assert _run("grpc://no-port").returncode == 2
    assert _run("--tls-cert", "c.pem", "grpc://127.0.0.1:1").returncode == 2


def _make_certs(directory: Path) -> None:
    """A CA and a server certificate for the name textserve-embedding.ml.svc."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=textserve-embedding",
        "-keyout", "tls.key", "-out", "tls.csr")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:textserve-embedding.ml.svc\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "san.ext", "-out", "tls.crt")  # fmt: skip


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_tls_probe_with_server_name(tmp_path: Path, mutual: bool) -> None:
    """As the chart's exec probes call it: 127.0.0.1, with the certificate's service name."""
    _make_certs(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [((tmp_path / "tls.key").read_bytes(), (tmp_path / "tls.crt").read_bytes())],
        root_certificates=(tmp_path / "ca.crt").read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    running = _serve_health(credentials)
    try:
        target = f"grpc://127.0.0.1:{running.port}/{SERVING}"
        base = ["--tls-ca", str(tmp_path / "ca.crt"), "--server-name", "textserve-embedding.ml.svc"]
        client = ["--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key")]
        result = _run(*base, *(client if mutual else []), target)
        assert result.returncode == 0, result.stdout + result.stderr
        wrong_name = _run("--tls-ca", str(tmp_path / "ca.crt"), "--server-name", "other.ml.svc", target)
        assert wrong_name.returncode == 1
        assert _run(target).returncode == 1, "plaintext against a TLS server fails"
        if mutual:
            assert _run(*base, target).returncode == 1, "no client certificate: rejected"
    finally:
        running.server.stop(None)
