"""Who sees which model: sticky arm assignment, and the experiment record that fixes the rules beforehand.

A user's arm is a pure function of ``(salt, user_id, split)``: the same user meets
the same model on every request and every replica, with no state to share. The
hash is SHA-256 (Python's ``hash()`` differs per process). Raising the split only
moves users from the champion to the challenger, never back: a user's bucket is
fixed, and the challenger takes buckets below the split.

An experiment record is written when a test starts and never edited after, except
to close it: the decision rule is declared before the first exposure, which is
what makes the verdict honest. Layout under the experiments folder::

    <id>.json        one experiment: versions, split, salt, rule, start (and end, outcome)
    current          the id of the running experiment (absent: none runs)
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from components.errors import TrendloopError
from components.files import write_atomic

CHAMPION, CHALLENGER = "champion", "challenger"
ARMS = (CHAMPION, CHALLENGER)
_BUCKETS = 2**64


class ExperimentError(TrendloopError):
    """An experiment that does not exist, or a change the rules forbid."""


def bucket(user_id: str, salt: str) -> float:
    """The user's fixed place in [0, 1): the first 8 bytes of SHA-256(salt:user_id)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _BUCKETS


def assign_arm(user_id: str, salt: str, split: float) -> str:
    """``challenger`` for the share ``split`` of users (by their bucket), ``champion`` for the rest."""
    return CHALLENGER if bucket(user_id, salt) < split else CHAMPION


@dataclass(frozen=True)
class Experiment:
    id: str
    champion_version: int
    challenger_version: int | None  # None: only the champion serves
    split: float  # the challenger's share of users
    salt: str  # makes this experiment's assignment independent of earlier ones
    rule: dict  # the decision rule, declared at the start (serving.abtest.DecisionRule.to_dict())
    started_at: str  # ISO-8601 UTC
    ended_at: str | None = None
    outcome: str | None = None  # promote, rollback, stopped
    notes: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.ended_at is None

    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    def ended(self) -> datetime | None:
        return datetime.fromisoformat(self.ended_at) if self.ended_at else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Experiment:
        return cls(**raw)


class Experiments:
    """The experiments folder: one JSON file each, and a pointer to the running one."""

    def __init__(self, root: Path):
        self.root = root

    def start(
        self,
        champion_version: int,
        challenger_version: int | None,
        split: float,
        rule: dict,
        salt: str | None = None,
        now: datetime | None = None,
    ) -> Experiment:
        """Open a new experiment; the running one, if any, is closed as ``stopped`` first."""
        if not 0.0 <= split <= 1.0:
            raise ExperimentError(f"split must lie in [0, 1], not {split}")
        if challenger_version is None and split > 0:
            raise ExperimentError("a split above 0 needs a challenger")
        now = now or datetime.now(UTC)
        current = self.current()
        if current is not None:
            self.finish(current.id, "stopped", "a new experiment started", now)
        exp = Experiment(
            id=f"exp-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}",
            champion_version=champion_version,
            challenger_version=challenger_version,
            split=split,
            salt=salt or secrets.token_hex(8),
            rule=rule,
            started_at=now.isoformat(),
        )
        self._write(exp)
        write_atomic(self.root / "current", exp.id)
        return exp

    def get(self, experiment_id: str) -> Experiment:
        path = self.root / f"{experiment_id}.json"
        if not path.exists():
            raise ExperimentError(f"no experiment {experiment_id} in {self.root}")
        return Experiment.from_dict(json.loads(path.read_text()))

    def current(self) -> Experiment | None:
        pointer = self.root / "current"
        if not pointer.exists():
            return None
        return self.get(pointer.read_text().strip())

    def all(self) -> list[Experiment]:
        """Every experiment, newest first."""
        found = [Experiment.from_dict(json.loads(p.read_text())) for p in self.root.glob("exp-*.json")]
        return sorted(found, key=lambda e: e.started_at, reverse=True)

    def finish(self, experiment_id: str, outcome: str, note: str = "", now: datetime | None = None) -> Experiment:
        exp = self.get(experiment_id)
        if not exp.running:
            raise ExperimentError(f"experiment {experiment_id} already ended ({exp.outcome})")
        ended = replace(
            exp,
            ended_at=(now or datetime.now(UTC)).isoformat(),
            outcome=outcome,
            notes=[*exp.notes, note] if note else exp.notes,
        )
        self._write(ended)
        pointer = self.root / "current"
        if pointer.exists() and pointer.read_text().strip() == experiment_id:
            pointer.unlink()
        return ended

    def _write(self, exp: Experiment) -> None:
        write_atomic(self.root / f"{exp.id}.json", json.dumps(exp.to_dict(), indent=2))
