"""Server TLS credentials read from PEM files, and read again when the files change.

Certificates mounted from a Kubernetes Secret are rotated in place (cert-manager renews
them; the kubelet swaps the files atomically). `reloading_server_credentials` hands gRPC a
fetcher it calls on new handshakes: at most every RECHECK_S seconds it compares the files'
modification times and sizes, and returns the new certificate, key and CA once they
change, so new connections use them without a restart (open connections keep theirs). A
rotation that cannot be read (half-written, missing) keeps the previous credentials and
logs a warning without any file content.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc

from textserve.core.config import TlsConfig

log = logging.getLogger(__name__)

RECHECK_S = 10.0
"""How often (at most) the certificate files are checked for changes."""

_Signature = tuple[tuple[str, int, int], ...]


class ReloadingServerCertificate:
    """The server's certificate configuration, re-read when its files change."""

    def __init__(self, tls: TlsConfig) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ValueError("server.tls.enabled=true needs server.tls.cert_file and server.tls.key_file")
        self._tls = tls
        self._files: list[Path] = [tls.cert_file, tls.key_file, *([tls.ca_file] if tls.ca_file else [])]
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._signature = self._current_signature()
        self.initial = self._load()
        self.reloads = 0
        """Times new files were taken into use."""

    def _current_signature(self) -> _Signature:
        signature = []
        for path in self._files:
            stat = path.stat()
            signature.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        tls = self._tls
        assert tls.cert_file is not None and tls.key_file is not None
        root = tls.ca_file.read_bytes() if tls.ca_file else None
        return grpc.ssl_server_certificate_configuration(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())], root_certificates=root
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC on handshakes: new configuration when the files changed, else None."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + RECHECK_S
            try:
                signature = self._current_signature()
                if signature == self._signature:
                    return None
                config = self._load()
            except (OSError, ValueError) as exc:
                log.warning(
                    "TLS files changed but could not be read; keeping the current ones",
                    extra={"error": type(exc).__name__},
                )
                return None
            self._signature = signature
            self.reloads += 1
        log.info("TLS certificate reloaded", extra={"reloads": self.reloads})
        return config

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials that follow the files (mutual TLS when require_client_cert)."""
        # The fetcher may return None ("no change"): grpc documents it, grpc-stubs does not.
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self._tls.require_client_cert,
        )


def reloading_server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials from tls's PEM files that pick up rotated files on new connections."""
    return ReloadingServerCertificate(tls).credentials()
