"""Identities and secrets of the API: API keys with scopes, and signed feedback tokens.

**Keys** look like ``smk_<key id>_<secret>`` (the key id is public: it names the row; the secret is
43 url-safe characters from :mod:`secrets`). Only the key's sha256 is stored (``api_keys``); a key
is checked by its key id, then the hashes are compared in constant time. ``ml keys create`` prints
a key once; ``ml keys list`` / ``ml keys revoke`` manage them. Scopes: ``predict``, ``feedback``,
``review``, ``admin`` (``admin`` may do everything).

**Feedback tokens** bind a prediction id to the identity that asked for it (``key:<name>#<key id>``,
or ``anon:<client address>``): ``<issued unix time>.<HMAC-SHA256 of (prediction id, identity, time)>``,
base64url. The signing key is ``feedback_token_secret`` when set, else 32 random bytes generated once
in ``var/secrets/feedback_token.key`` (mode 0600; every API process on the machine reads the same).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.store import keys as store

SCOPES = ("predict", "feedback", "review", "admin")
KEY_PREFIX = "smk_"
TOKEN_SECRET_FILE = "feedback_token.key"


class KeyError_(ValueError):
    """A key could not be created or revoked (bad name, unknown scope, unknown key)."""


@dataclass(frozen=True)
class Identity:
    """Who is calling: a key (``name``, ``key_id``, ``scopes``) or an anonymous client address."""

    kind: str  # "key" | "anonymous"
    name: str
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        """The identity as stored with feedback and bound into feedback tokens."""
        return f"key:{self.name}#{self.key_id}" if self.kind == "key" else f"anon:{self.name}"

    @property
    def anonymous(self) -> bool:
        return self.kind != "key"

    def has(self, *scopes: str) -> bool:
        """True when the identity holds any of ``scopes`` (``admin`` holds them all)."""
        return "admin" in self.scopes or any(s in self.scopes for s in scopes)


def client_address(host: str | None) -> str:
    """The peer as an identity part: a normalized IP address (``ipaddress``; an IPv4-mapped IPv6 address
    as its IPv4 form, no zone), ``unknown`` for anything else. Never a header's text as sent."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.strip().split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


def anonymous(client_host: str | None) -> Identity:
    """An anonymous caller, identified by its peer address (built by the platform: ``anon:<address>``)."""
    return Identity("anonymous", client_address(client_host))


# ---------------------------------------------------------------- keys
def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_id(key: str) -> str | None:
    """The key id of a well-formed key, else None (no I/O: a malformed key needs no lookup)."""
    return _parse(key)


def _parse(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 12 or len(secret) < 32:
        return None
    return key_id


def check_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    out = sorted({s.strip().lower() for s in scopes if s and s.strip()})
    bad = [s for s in out if s not in SCOPES]
    if bad or not out:
        raise KeyError_(f"scopes must be one or more of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    return out


def create_key(
    name: str, scopes: list[str] | tuple[str, ...], settings: Settings | None = None, created_by: str | None = "cli"
) -> tuple[str, dict[str, Any]]:
    """A new key: (the key, shown once and never stored, its row without the hash)."""
    name = name.strip()
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise KeyError_("a key's name is 1-100 characters without spaces (e.g. the client's name)")
    checked = check_scopes(scopes)
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    with db.connect(settings or get_settings()) as conn:
        row = store.insert(conn, key_id, name, hash_key(key), checked, created_by)
    return key, row


def list_keys(settings: Settings | None = None, include_revoked: bool = True) -> list[dict[str, Any]]:
    with db.connect(settings or get_settings()) as conn:
        return store.list_keys(conn, include_revoked)


def revoke_key(name_or_key_id: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Revoke a key by its key id, or every live key of a name. Raises when nothing matched."""
    with db.connect(settings or get_settings()) as conn:
        rows = store.revoke(conn, name_or_key_id)
    if not rows:
        raise KeyError_(f"no live key with key id or name {name_or_key_id!r}")
    return rows


def verify_key(conn: psycopg.Connection, key: str) -> Identity | None:
    """The identity of a live key, else None (unknown, malformed, revoked or wrong secret)."""
    key_id = _parse(key)
    if key_id is None:
        return None
    row = store.by_key_id(conn, key_id)
    if row is None:
        hmac.compare_digest(hash_key(key), hash_key(key))  # same work for an unknown key id
        return None
    if not hmac.compare_digest(row["key_sha256"], hash_key(key)) or row["revoked_at"] is not None:
        return None
    store.touch(conn, key_id)
    return Identity("key", row["name"], key_id, frozenset(row["scopes"]))


# ---------------------------------------------------------------- feedback tokens
def _write_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins; a concurrent process reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def token_secret_file(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "secrets" / TOKEN_SECRET_FILE


def signing_key(settings: Settings | None = None) -> bytes:
    """``feedback_token_secret``, else the generated key under ``var/secrets/`` (created once, 0600)."""
    s = settings or get_settings()
    if s.feedback_token_secret is not None:
        value = s.feedback_token_secret.get_secret_value()
        if len(value) < 32:
            raise ValueError("feedback_token_secret must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value.encode("utf-8")
    path = token_secret_file(s)
    if not path.exists():
        _write_secret(path)
    value = path.read_text().strip()
    if len(value) < 32:
        raise ValueError(f"{path} holds no usable key; delete it to generate a new one")
    return value.encode("utf-8")


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _sign(key: bytes, prediction_id: str, identity: str, issued: int) -> str:
    msg = f"feedback-token/v1\n{prediction_id}\n{identity}\n{issued}".encode()
    return _b64(hmac.new(key, msg, hashlib.sha256).digest())


def feedback_token(key: bytes, prediction_id: Any, identity: str, issued: int | None = None) -> str:
    issued = int(time.time()) if issued is None else issued
    return f"{issued}.{_sign(key, str(prediction_id).lower(), identity, issued)}"


def check_feedback_token(key: bytes, token: str, prediction_id: Any, identity: str, max_age: float) -> str | None:
    """None when ``token`` was issued for this prediction to this identity and is not too old;
    otherwise why not (one line)."""
    issued_s, sep, sig = (token or "").partition(".")
    # ASCII only: str.isdigit() accepts '²' (int() does not) and hmac.compare_digest refuses non-ASCII str
    if not sep or not token.isascii() or not issued_s.isdigit() or not sig:
        return "feedback_token is malformed"
    expected = _sign(key, str(prediction_id).lower(), identity, int(issued_s))
    if not hmac.compare_digest(expected, sig):
        return "feedback_token does not belong to this prediction and caller"
    if time.time() - int(issued_s) > max_age:
        return f"feedback_token has expired (tokens are valid {max_age:g}s)"
    return None
