"""Pseudonymous users: a raw user id becomes a keyed pseudonym at every edge, and only that is stored.

``Pseudonyms.of(user_id)`` is HMAC-SHA256 of the id under a secret key (RFC 2104), cut to
128 bits: the same user always gets the same pseudonym (sticky A/B arms, per-user features
and the A/B analysis work on it), and without the key nobody can go from a guessable id
(``u00263``) to its pseudonym or back. The key is a file: the embedded default makes one
on first use (32 random bytes, mode 0600); on a cluster the state volume holds it, or a
mounted Kubernetes Secret does (``[privacy] key_file``). It is never logged or put into a
run's parameters; steps and replicas get the file's path.

``receipt(user_id)`` is a second keyed hash, in another domain: what the audit of a
deletion keeps, so that a forgotten user can be recognised (ingest skips them) while
nothing stored links the receipt to the pseudonym their data had.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import stat
from pathlib import Path

from components.errors import ConfigError
from components.files import create_secret

KEY_BYTES = 32
PREFIX = "p-"  # a pseudonym reads as one: p- and 32 hex digits
_PSEUDONYM, _RECEIPT = b"trendloop/user\x00", b"trendloop/forgotten\x00"  # HMAC domains


class Pseudonyms:
    """Raw user ids to pseudonyms under one key."""

    def __init__(self, key: bytes, forgotten: frozenset[str] = frozenset()):
        if len(key) < 16:
            raise ConfigError("a pseudonym key needs at least 16 bytes")
        self._key = key
        self.forgotten = forgotten  # receipts of users who asked to be forgotten: their posts are not ingested

    def of(self, user_id: str) -> str:
        """The pseudonym of ``user_id`` (``p-`` and 32 hex digits)."""
        return PREFIX + hmac.new(self._key, _PSEUDONYM + user_id.encode(), hashlib.sha256).hexdigest()[:32]

    def receipt(self, user_id: str) -> str:
        """What a deletion's audit record keeps of ``user_id``: not its pseudonym, not reversible."""
        return "r-" + hmac.new(self._key, _RECEIPT + user_id.encode(), hashlib.sha256).hexdigest()[:32]

    def is_forgotten(self, user_id: str) -> bool:
        return bool(self.forgotten) and self.receipt(user_id) in self.forgotten

    def __repr__(self) -> str:
        return "Pseudonyms(key=<hidden>)"

    @classmethod
    def ephemeral(cls) -> Pseudonyms:
        """A random key kept nowhere: pseudonyms for one process's life (a benchmark)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_file(cls, path: Path, create: bool = True, forgotten: frozenset[str] = frozenset()) -> Pseudonyms:
        """The key in ``path``; with ``create``, a new random one written there first if there is none."""
        if create:
            create_secret(path, secrets.token_bytes(KEY_BYTES))
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    f"the pseudonym key {path} can be read by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}"
                )
            key = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"no pseudonym key at {path} ([privacy] key_file)") from None
        except PermissionError:
            raise ConfigError(f"the pseudonym key {path} cannot be read by this user") from None
        return cls(key, forgotten)
