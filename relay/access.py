"""Who may relay: SMTP AUTH users with scrypt password hashes, their senders, and TLS.

Password hashes use the standard library's `hashlib.scrypt` and look like
`scrypt$16384$8$1$SALT$HASH` (n, r, p, then base64 salt and derived key), so a config file
never holds a password. `outbox-relay hash-password` makes one. Checking a password costs
about 16 MiB and tens of milliseconds on purpose; the server runs it in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl
from pathlib import Path

from relay.errors import ConfigError

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_LENGTH = 32
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A new `scrypt$...` hash of `password` with a random salt."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_KEY_LENGTH
    )
    encoded = [base64.b64encode(part).decode() for part in (salt, key)]
    return f"scrypt${n}${r}${p}${encoded[0]}${encoded[1]}"


def parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, key) of a `scrypt$...` hash; ValueError if it is not one."""
    fields = text.split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        raise ValueError("must look like scrypt$N$R$P$SALT$HASH (see `outbox-relay hash-password`)")
    n, r, p = (int(value) for value in fields[1:4])
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("scrypt parameters must be N a power of 2, R and P at least 1")
    salt = base64.b64decode(fields[4], validate=True)
    key = base64.b64decode(fields[5], validate=True)
    if not salt or len(key) < 16:
        raise ValueError("salt or hash missing")
    return n, r, p, salt, key


def verify_password(password: bytes, stored: str) -> bool:
    """True when `password` matches hash `stored` (constant-time comparison)."""
    try:
        n, r, p, salt, key = parse_hash(stored)
        derived = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(key))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived, key)


def sender_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    """True when MAIL FROM `address` matches one entry: a full address or `@domain`/`domain`."""
    if not allowed:
        return True
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    for entry in allowed:
        entry = entry.strip().lower()
        if "@" in entry.lstrip("@"):
            if address == entry:
                return True
        elif domain == entry.lstrip("@"):
            return True
    return False


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The listener's TLS context (TLS 1.2 or newer); ConfigError if the files do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the certificate and key: {exc}", key_path="listen.tls_cert"
        ) from exc
    return context
