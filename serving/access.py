"""Who may read the report surfaces (the A/B dashboard, its report, the detail of /readyz) when the app
listens beyond 127.0.0.1: whoever holds the report token.

The token is a file (``[serving] report_token_file``, unset ``<home>/secrets/report.token``):
the command line makes it on first use (``ensure_token``: 256 random bits, mode 0600, in a
folder of mode 0700) and hands the replicas its path, never the token, so it is in no Serve
config, no log and no process list. A replica reads it through ``TokenFile``, again whenever
the file changes: writing a new token rotates it without a restart.

A request shows the token as ``Authorization: Bearer <token>`` (RFC 6750). A browser cannot
send that header for the page's stylesheet and script (``<link>``, ``<script src>``: the page
has no inline code, by its Content-Security-Policy), so ``/ab?token=<token>`` once sets a
cookie instead and redirects to ``/ab``, dropping the token from the address bar and history.
The cookie holds ``dashboard_key(token)``, an HMAC of the token, not the token: it opens the
dashboard's own paths only (``Path=/ab``), is ``HttpOnly`` (no script reads it) and
``SameSite=Strict`` (no other site's page sends it). Every comparison is ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from pathlib import Path

from components.errors import ConfigError
from components.files import create_secret

COOKIE = "trendloop_report"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only; 0.0.0.0 listens on every interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def ensure_token(path: Path) -> Path:
    """The token file at ``path``, made now (mode 0600) unless it exists; its contents are never printed."""
    create_secret(path, (secrets.token_urlsafe(32) + "\n").encode())
    return path


class TokenFile:
    """The token in ``path``, read again when the file changes (its modification time or size)."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token = ""

    def read(self) -> str:
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._seen:
                token = self.path.read_text().strip()
                if len(token) < 16:
                    raise ConfigError(f"the report token in {self.path} is shorter than 16 characters")
                self._token, self._seen = token, (stat.st_mtime_ns, stat.st_size)
        except OSError as err:
            raise ConfigError(f"cannot read the report token file {self.path}: {err.strerror}") from None
        return self._token


def dashboard_key(token: str) -> str:
    """What the dashboard's cookie holds: derived from the token, useless as a bearer token elsewhere."""
    return hmac.new(token.encode(), b"trendloop dashboard cookie", hashlib.sha256).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def same(given: str | None, expected: str) -> bool:
    """Whether ``given`` is ``expected``, in time that does not depend on where they differ."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
