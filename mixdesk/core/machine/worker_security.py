"""Who may use a worker, and over what: the shared secret, the proofs, TLS and pinned certificates.

``mixdesk worker`` makes a secret once (32 random bytes, hex, in a 0600 file) and a self-signed
certificate. The machine that runs the model holds the same secret (a file, or an environment
variable; never its command line) and pins the worker's certificate the first time it connects,
as SSH pins host keys. Each connection then proves, both ways, that the other side holds the
secret without sending it::

    client -> MIXDESK/2 AUTH <client nonce>
    worker -> MIXDESK/2 CHALLENGE <worker nonce> <worker proof>
    client -> MIXDESK/2 PROOF <client proof> <question>

A proof is HMAC-SHA256 over its role, both nonces and the certificate's fingerprint (``plain``
on loopback without TLS), so a proof is never valid twice, the worker's proof cannot be replayed
as a client's, and a man in the middle with another certificate cannot pass the client's proof
on. Until the client's proof checks out, the worker relays nothing to llama.cpp.

Nothing here loads llama.cpp or Qt.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mixdesk import paths
from mixdesk.core.machine.net import is_loopback
from mixdesk.errors import MixdeskError, WorkerAuthError, WorkerFingerprintError

log = logging.getLogger(__name__)

PROTOCOL = "MIXDESK/2"
#: The secret itself (hex), for a client.
SECRET_ENV = "MIXDESK_WORKER_SECRET"  # noqa: S105 - a variable's name, not a secret
#: A file holding the secret, for a client.
SECRET_FILE_ENV = "MIXDESK_WORKER_SECRET_FILE"  # noqa: S105 - a variable's name
#: ``always``: TLS to loopback workers too (to measure what it costs); default: not on loopback.
TLS_ENV = "MIXDESK_WORKER_TLS"
NONCE_BYTES = 32
SECRET_BYTES = 32
#: What a proof binds to when the link is loopback without TLS.
PLAIN_BINDING = b"plain"


def default_secret_file() -> Path:
    """Where ``mixdesk worker`` keeps its secret, and where a client looks for one."""
    return paths.config_dir() / "worker-secret"


def pins_file() -> Path:
    """The certificate fingerprints this machine pinned, one per worker address."""
    return paths.config_dir() / "worker-fingerprints.json"


def default_tls_dir() -> Path:
    """Where ``mixdesk worker`` keeps its certificate and key."""
    return paths.config_dir() / "worker-tls"


def _parse_secret(text: str) -> bytes | None:
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) >= 16 else None


def worker_secret(path: Path | None = None) -> tuple[bytes, Path, bool]:
    """The worker's secret: read from ``path`` (default :func:`default_secret_file`), or made
    there (0600) the first time.

    Returns:
        (secret, its file, whether it was made now).

    Raises:
        MixdeskError: the file exists but holds no secret.
    """
    path = path or default_secret_file()
    if path.exists():
        secret = _parse_secret(path.read_text(encoding="utf-8", errors="replace"))
        if secret is None:
            raise MixdeskError(
                f"{path} holds no worker secret (64 hexadecimal digits); delete it and "
                "`mixdesk worker` makes a new one."
            )
        paths.private_file(path)  # tighten a copy made readable by others
        return secret, path, False
    secret = secrets.token_bytes(SECRET_BYTES)
    paths.write_private_text(path, secret.hex() + "\n")
    return secret, path, True


def client_secret(endpoint: str) -> bytes:
    """The secret this machine proves itself with: ``MIXDESK_WORKER_SECRET``, else the file
    ``MIXDESK_WORKER_SECRET_FILE`` names, else :func:`default_secret_file`.

    Raises:
        WorkerAuthError: none of them holds a secret.
    """
    where = default_secret_file()
    if os.environ.get(SECRET_ENV):
        found = _parse_secret(os.environ[SECRET_ENV])
        where_said = f"${SECRET_ENV}"
    else:
        if os.environ.get(SECRET_FILE_ENV):
            where = Path(os.environ[SECRET_FILE_ENV]).expanduser()
        where_said = str(where)
        try:
            found = _parse_secret(where.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            found = None
    if found is None:
        raise WorkerAuthError(
            f"There is no worker secret in {where_said} for the worker at {endpoint}; copy the "
            f"secret file `mixdesk worker` printed on that machine to {default_secret_file()} "
            f"here, or set {SECRET_FILE_ENV} to where you put it.",
            endpoint=endpoint,
        )
    return found


def new_nonce() -> bytes:
    """A fresh random nonce."""
    return secrets.token_bytes(NONCE_BYTES)


def proof(
    secret: bytes, role: str, client_nonce: bytes, worker_nonce: bytes, binding: bytes
) -> bytes:
    """HMAC-SHA256 proving ``role`` (``client`` or ``worker``) holds ``secret`` for this exchange."""
    message = b"\0".join([f"mixdesk-worker {role}".encode(), client_nonce, worker_nonce, binding])
    return hmac.new(secret, message, hashlib.sha256).digest()


def proofs_match(expected: bytes, given_hex: str) -> bool:
    """Compare a proof in constant time (a malformed one never matches)."""
    try:
        given = bytes.fromhex(given_hex)
    except ValueError:
        return False
    return hmac.compare_digest(expected, given)


# -- TLS ----------------------------------------------------------------------------------


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint as printed and pinned (``SHA256:ab:cd:...``)."""
    digest = hashlib.sha256(der).hexdigest()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def binding(fingerprint_text: str | None) -> bytes:
    """What proofs bind to: the certificate's fingerprint, or :data:`PLAIN_BINDING`."""
    return fingerprint_text.encode() if fingerprint_text else PLAIN_BINDING


@dataclass(frozen=True)
class WorkerCertificate:
    """The worker's self-signed certificate and key (0600), and the certificate's fingerprint."""

    cert: Path
    key: Path
    fingerprint: str


def worker_certificate(folder: Path | None = None) -> WorkerCertificate:
    """The worker's certificate in ``folder`` (default :func:`default_tls_dir`), made with the
    ``openssl`` command the first time (an ECDSA P-256 key).

    Raises:
        MixdeskError: there is no ``openssl`` command, or it failed.
    """
    folder = paths.ensure_private_dir(folder or default_tls_dir())
    cert, key = folder / "worker-cert.pem", folder / "worker-key.pem"
    if not (cert.exists() and key.exists()):
        openssl = shutil.which("openssl")
        if openssl is None:
            raise MixdeskError(
                "Making the worker's TLS certificate needs the `openssl` command; install "
                "OpenSSL (e.g. `apt-get install openssl`) and start `mixdesk worker` again."
            )
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            done = subprocess.run(
                [
                    openssl,
                    *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                    *("-nodes", "-days", "36500", "-subj", "/CN=mixdesk-worker", "-batch"),
                    *("-keyout", str(Path(tmp) / "key.pem"), "-out", str(Path(tmp) / "cert.pem")),
                ],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                log.error("openssl failed: %s", done.stderr.decode(errors="replace"))
                raise MixdeskError(
                    "`openssl` could not make the worker's TLS certificate; the log has its "
                    "message."
                )
            os.chmod(Path(tmp) / "key.pem", paths.PRIVATE_FILE_MODE)
            os.replace(Path(tmp) / "key.pem", key)
            os.replace(Path(tmp) / "cert.pem", cert)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))
    return WorkerCertificate(cert, key, fingerprint(der))


def server_context(certificate: WorkerCertificate) -> ssl.SSLContext:
    """The worker's TLS context (TLS 1.2 or newer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


def client_context() -> ssl.SSLContext:
    """A client's TLS context: the certificate is checked against the pinned fingerprint
    (:func:`check_pin`), not against certificate authorities."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wants_tls(host: str) -> bool:
    """Whether a client uses TLS to a worker on ``host``: always off loopback (loopback may
    skip it, never the secret); on loopback too with ``MIXDESK_WORKER_TLS=always``."""
    return os.environ.get(TLS_ENV, "").lower() == "always" or not is_loopback(host)


def _read_pins() -> dict[str, str]:
    """The pinned fingerprints ({} before the first).

    Raises:
        WorkerFingerprintError: the file is there but cannot be read or is damaged: its pins
            are not forgotten (and overwritten) in silence.
    """
    path = pins_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise _damaged_pins(path, err.strerror or str(err)) from None
    try:
        pins = json.loads(text)
    except ValueError:
        pins = None
    if not isinstance(pins, dict):
        raise _damaged_pins(path, "it is not a list of pins")
    return {str(k): str(v) for k, v in pins.items()}


def _damaged_pins(path: Path, why: str) -> WorkerFingerprintError:
    return WorkerFingerprintError(
        f"The pinned worker certificates in {path} cannot be read ({why}), so MixDesk cannot "
        "check any worker's certificate; repair the file, or remove it to pin anew."
    )


def check_pin(endpoint: str, seen: str) -> bool:
    """Check ``seen`` against the fingerprint pinned for ``endpoint``.

    Returns:
        Whether none is pinned yet: the caller pins ``seen`` (:func:`pin`) once the worker has
        proven it holds the secret, so that whoever answers first is not trusted for that.

    Raises:
        WorkerFingerprintError: ``endpoint`` presented another certificate before.
    """
    pinned = _read_pins().get(endpoint)
    if pinned is None:
        return True
    if not hmac.compare_digest(pinned, seen):
        raise WorkerFingerprintError(
            f"The worker at {endpoint} presents a certificate ({seen}) other than the one pinned "
            f"on first use ({pinned}), so MixDesk does not connect: someone may be intercepting "
            f"the link; if the worker's certificate was made anew, remove its line from "
            f"{pins_file()}.",
            endpoint=endpoint,
        )
    return False


def pin(endpoint: str, seen: str) -> None:
    """Pin ``seen`` for ``endpoint`` (first use, after the worker proved the secret)."""
    pins = _read_pins()
    pins[endpoint] = seen
    paths.write_private_text(pins_file(), json.dumps(pins, indent=1, sort_keys=True) + "\n")
    log.info("pinned the certificate of the worker at %s: %s", endpoint, seen)


def forget_pin(endpoint: str) -> None:
    """Remove ``endpoint``'s pinned fingerprint (the next connection pins anew)."""
    pins = _read_pins()
    if pins.pop(endpoint, None) is not None:
        with contextlib.suppress(OSError):
            paths.write_private_text(pins_file(), json.dumps(pins, indent=1) + "\n")
