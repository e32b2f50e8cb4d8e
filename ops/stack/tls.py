"""TLS for the embedded broker: a local CA, and a terminator that requires client certificates.

Tansu 0.6's own `--cert`/`--authentication` did not work, so `coda stack up --tls` puts this
terminator in front of it instead: Tansu listens in plain text on a private loopback port and
advertises the terminator's port, so every client — bootstrap and the reconnects that follow
the metadata — goes through TLS. The terminator is a small asyncio proxy (Python's `ssl`, no
system dependency) with `verify_mode=CERT_REQUIRED`: a client without a certificate signed by
the stack's CA never reaches the broker.

Files (under `<state dir>/tls/`): `ca.pem` (trust anchor for both sides), `server.pem`/
`server.key` (the terminator; SAN 127.0.0.1 and localhost), `client.pem`/`client.key` (the
system's own clients), `ca.key` (kept to issue more client certificates), `client.env` (the
`CODA_SECURITY_PROTOCOL`/`CODA_SSL_*` lines to export).

Limit: the plain listener still accepts connections from this host's loopback interface; the
terminator protects the broker from the network, not from local users of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

log = logging.getLogger(__name__)

TLS_DIR = "tls"
HANDSHAKE_TIMEOUT_S = 10.0
VALID_DAYS = 825


class _InDirectory:
    """One file of a TlsFiles' directory, named once: `files.ca` is `files.directory / "ca.pem"`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, files: TlsFiles, owner: type[TlsFiles]) -> Path:
        return files.directory / self.name


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the stack's CA, the terminator's and the clients' certificates live."""

    directory: Path
    ca = _InDirectory("ca.pem")
    ca_key = _InDirectory("ca.key")
    server = _InDirectory("server.pem")
    server_key = _InDirectory("server.key")
    client = _InDirectory("client.pem")
    client_key = _InDirectory("client.key")
    env_file = _InDirectory("client.env")

    def exists(self) -> bool:
        return all(p.exists() for p in (self.ca, self.ca_key, self.server, self.server_key, self.client,
                                        self.client_key))


def tls_files(settings: Settings) -> TlsFiles:
    return TlsFiles(settings.state_dir / TLS_DIR)


# --------------------------------------------------------------------------- certificates
def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _name(common: str) -> object:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coda-streams local stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(files_dir: Path, name: str, ca_cert: Path, ca_key: Path, server: bool = False) -> tuple[Path, Path]:
    """A key and a certificate `name` signed by the CA (server: SAN 127.0.0.1, ::1, localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    authority_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(f"coda {name}"))  # type: ignore[arg-type]
               .issuer_name(authority.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(authority_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_path, key_path = files_dir / f"{name}.pem", files_dir / f"{name}.key"
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def make_ca(files_dir: Path, common: str = "coda local CA") -> tuple[Path, Path]:
    """A self-signed CA (EC P-256) under `files_dir` as ca.pem / ca.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(common)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)  # type: ignore[arg-type]
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(files_dir / "ca.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), private=True)
    _write(files_dir / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return files_dir / "ca.pem", files_dir / "ca.key"


def ensure_certificates(files: TlsFiles) -> TlsFiles:
    """Generate the CA, the terminator's and the clients' certificates once; later starts reuse them."""
    if not files.exists():
        make_ca(files.directory)
        issue(files.directory, "server", files.ca, files.ca_key, server=True)
        issue(files.directory, "client", files.ca, files.ca_key)
    return files


def client_settings(settings: Settings, files: TlsFiles) -> Settings:
    """`settings` speaking TLS with the stack's client certificate."""
    return settings.replace(security_protocol="SSL", ssl_cafile=str(files.ca), ssl_certfile=str(files.client),
                            ssl_keyfile=str(files.client_key))


def env_lines(files: TlsFiles) -> list[str]:
    """The shell line that points every `coda` client at the stack's certificates."""
    line = (f"export CODA_SECURITY_PROTOCOL=SSL CODA_SSL_CAFILE={files.ca} CODA_SSL_CERTFILE={files.client} "
            f"CODA_SSL_KEYFILE={files.client_key}")
    return [line]


# --------------------------------------------------------------------------- the terminator
def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2+, our certificate, and a client certificate signed by our CA required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.server), str(files.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Terminator:
    """Accepts TLS connections that present a valid client certificate and pipes them to the broker."""

    def __init__(self, files: TlsFiles, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.files, self.listen, self.upstream = files, listen, upstream
        self.accepted = 0
        self.refused = 0
        self._context = server_context(files)
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve_forever(self) -> None:
        """Accept plain sockets and do each handshake here, so a refused client is logged.

        (asyncio's own TLS server drops a failed handshake silently, outside debug mode.)
        """
        loop = asyncio.get_running_loop()
        with socket.create_server(self.listen, backlog=128) as server:
            server.setblocking(False)
            log.info("TLS terminator on %s:%s -> %s:%s (client certificates required)", *self.listen,
                     *self.upstream)
            while True:
                sock, peer = await loop.sock_accept(server)
                task = asyncio.create_task(self._client(sock, peer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _client(self, sock: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, ssl=self._context,
                                                              ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except ssl.SSLError as exc:
            self.refused += 1
            log.warning("refused a client at %s: %s", peer, exc.reason or exc)
            sock.close()
            return
        except (TimeoutError, ConnectionError, OSError) as exc:  # e.g. a port probe
            log.info("client at %s left before completing a TLS handshake (%s)", peer, type(exc).__name__)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        subject = dict(x[0] for x in (writer.get_extra_info("peercert") or {}).get("subject", ()))
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("broker %s:%s unreachable for client %s: %s", *self.upstream, peer, exc)
            writer.close()
            return
        self.accepted += 1
        log.debug("client %s (%s) connected", peer, subject.get("commonName", "?"))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, ssl.SSLError, OSError, RuntimeError):
            pass


def spawn(files: TlsFiles, listen_port: int, upstream_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """The terminator as its own process (it outlives the CLI, like the broker; `down` stops it)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.stack.tls", "--listen", f"127.0.0.1:{listen_port}",
             "--upstream", f"127.0.0.1:{upstream_port}", "--dir", str(files.directory)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.stack.tls", description="TLS terminator for the embedded broker")
    parser.add_argument("--listen", type=_address, required=True, help="host:port to accept TLS on")
    parser.add_argument("--upstream", type=_address, required=True, help="the broker's plain host:port")
    parser.add_argument("--dir", type=Path, required=True, help="directory with ca.pem, server.pem, server.key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    terminator = Terminator(TlsFiles(args.dir), args.listen, args.upstream)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(terminator.serve_forever())
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
