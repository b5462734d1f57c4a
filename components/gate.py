"""The promotion gate: may a challenger replace the champion? A small policy with its reasons.

The three checks, in the order a reviewer would ask them:
1. forgetting: on the classes the champion knew, the challenger loses at most
   ``old_class_margin`` accuracy;
2. the trend: on the newest trend slice it beats the champion by more than
   ``newest_slice_gain`` (with no trend slice in the test set, overall accuracy);
3. behaviour: at least ``min_stability`` of its test predictions survive each mild
   brightness or crop change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.errors import ConfigError
from components.evaluate import OLD_CLASSES, Evaluation


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: list[Check]
    challenger: str
    champion: str | None
    snapshot: str

    @property
    def reasons(self) -> list[str]:
        return [f"{'pass' if c.passed else 'FAIL'} {c.name}: {c.reason}" for c in self.checks]

    def to_dict(self) -> dict:
        return asdict(self) | {"reasons": self.reasons}

    @classmethod
    def from_dict(cls, raw: dict) -> Verdict:
        checks = [Check(c["name"], c["passed"], c["reason"]) for c in raw["checks"]]
        return cls(raw["passed"], checks, raw["challenger"], raw["champion"], raw["snapshot"])


@dataclass(frozen=True)
class PromotionGate:
    old_class_margin: float = 0.02  # most old-class accuracy a challenger may lose
    newest_slice_gain: float = 0.0  # accuracy it must gain on the newest trend slice, at least (strictly more)
    min_stability: float = 0.9  # share of top-1 labels that must survive each perturbation

    def decide(self, challenger: Evaluation, champion: Evaluation | None) -> Verdict:
        if champion is not None and champion.snapshot != challenger.snapshot:
            raise ConfigError(
                f"the champion was scored on snapshot {champion.snapshot} and the challenger on "
                f"{challenger.snapshot}: compare on one test set"
            )
        checks = [
            self._forgetting(challenger, champion),
            self._trend(challenger, champion),
            self._stability(challenger),
        ]
        return Verdict(
            passed=all(c.passed for c in checks),
            checks=checks,
            challenger=challenger.model,
            champion=champion.model if champion else None,
            snapshot=challenger.snapshot,
        )

    def _forgetting(self, challenger: Evaluation, champion: Evaluation | None) -> Check:
        if champion is None:
            return Check("old classes", True, "no champion yet: nothing to forget")
        if OLD_CLASSES not in challenger.slices or OLD_CLASSES not in champion.slices:
            return Check("old classes", True, "no posts of the champion's classes in the test set")
        new, old = challenger.slices[OLD_CLASSES].accuracy, champion.slices[OLD_CLASSES].accuracy
        drop = old - new
        return Check(
            "old classes",
            drop <= self.old_class_margin,
            f"accuracy {new:.3f} vs champion {old:.3f} (drop {drop:+.3f}, allowed {self.old_class_margin:.3f})",
        )

    def _trend(self, challenger: Evaluation, champion: Evaluation | None) -> Check:
        if champion is None:
            return Check("newest trend", True, "no champion yet: nothing to beat")
        name = challenger.newest_slice
        if name is None or name not in champion.slices:
            new, old, what = challenger.overall.accuracy, champion.overall.accuracy, "overall (no trend slice)"
        else:
            new, old, what = challenger.slices[name].accuracy, champion.slices[name].accuracy, name
        gain = new - old
        return Check(
            "newest trend",
            gain > self.newest_slice_gain,
            f"{what}: accuracy {new:.3f} vs champion {old:.3f} "
            f"(gain {gain:+.3f}, needs more than {self.newest_slice_gain:+.3f})",
        )

    def _stability(self, challenger: Evaluation) -> Check:
        if not challenger.stability:
            return Check("stability", False, "no behavioural checks were run")
        worst = min((v, k) for k, v in challenger.stability.items() if k != "min")
        return Check(
            "stability",
            worst[0] >= self.min_stability,
            f"worst {worst[1]}: {worst[0]:.3f} of predictions unchanged (needs {self.min_stability:.3f})",
        )
