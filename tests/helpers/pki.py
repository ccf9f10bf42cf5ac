"""A throw-away PKI for TLS tests, made with the openssl CLI at test time."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["make_pki", "tls_server_args"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(directory: Path, name: str, subject: str, alt_names: str, ca: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", subject, cwd=directory)
    (directory / f"{name}.ext").write_text(f"subjectAltName={alt_names}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile",
             f"{name}.ext", cwd=directory)


def make_pki(directory: Path) -> Path:
    """Write into ``directory`` a CA (ca.crt/.key), a server certificate for
    localhost/127.0.0.1 (server), one for another host (elsewhere), a client certificate
    (client), and an unrelated CA (other-ca); returns ``directory``."""
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}", cwd=directory)
    _signed(directory, "server", "/CN=localhost", "DNS:localhost,IP:127.0.0.1", "ca")
    _signed(directory, "elsewhere", "/CN=cache.example", "DNS:cache.example", "ca")
    _signed(directory, "client", "/CN=app", "DNS:app", "ca")
    return directory


def tls_server_args(pki: Path, tls_port: int, cert: str = "server", clients: str = "no"
                    ) -> list[str]:
    """redis-server arguments that add a TLS listener on ``tls_port``."""
    return ["--tls-port", str(tls_port), "--tls-cert-file", str(pki / f"{cert}.crt"),
            "--tls-key-file", str(pki / f"{cert}.key"),
            "--tls-ca-cert-file", str(pki / "ca.crt"), "--tls-auth-clients", clients]
