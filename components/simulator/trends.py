"""Trend events on the day timeline and the class and filter shares they imply.

Every event first shows on ``start_day`` and grows linearly to full strength on
``start_day + ramp_days`` (a step when ``ramp_days`` is 0), then stays there. Events
combine: new classes take their share first, the remaining share is split between
the existing classes in proportion to their (prior-shifted) weights.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from components.errors import ConfigError

Filter = Literal["vintage", "noir", "neon", "grain"]  # the trending filters apply_filter knows
FILTERS = get_args(Filter)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_day: int = Field(ge=0)  # first day on which the event shows at all
    ramp_days: int = Field(default=0, ge=0)  # days from first appearance to full strength

    def strength(self, day: int) -> float:
        """0 before the event, rising linearly to 1 at the end of its ramp."""
        if day < self.start_day:
            return 0.0
        if self.ramp_days == 0:
            return 1.0
        return min(1.0, (day - self.start_day + 1) / (self.ramp_days + 1))


class NewClass(_Event):
    """A content type nobody posted before appears and grows (a new meme format)."""

    kind: Literal["new_class"] = "new_class"
    name: str = "meme"  # the content tag annotators will give it
    look: Literal["meme", "pixel_art"] = "meme"  # how its images are drawn
    share: float = Field(default=0.2, gt=0, lt=1)  # its share of all posts once fully grown

    def describe(self) -> str:
        return (
            f"new class {self.name!r} ({self.look} look) appears on day {self.start_day}, "
            f"{self.share:.0%} of posts from day {self.start_day + self.ramp_days}"
        )


class StyleShift(_Event):
    """A filter trend: a growing share of posts, whatever their content, gets a look."""

    kind: Literal["style_shift"] = "style_shift"
    filter: Filter = "vintage"
    share: float = Field(default=0.3, gt=0, le=1)  # share of posts filtered once fully grown

    def describe(self) -> str:
        return (
            f"{self.filter} filter craze starts on day {self.start_day}, "
            f"on {self.share:.0%} of posts from day {self.start_day + self.ramp_days}"
        )


class PriorShift(_Event):
    """What people post changes: some classes' shares are multiplied."""

    kind: Literal["prior_shift"] = "prior_shift"
    weights: dict[str, float] = Field(default_factory=lambda: {"fitness": 3.0})  # class -> multiplier at full strength

    def describe(self) -> str:
        change = ", ".join(f"{name} x{mult:g}" for name, mult in self.weights.items())
        return f"prior shift from day {self.start_day}: {change} by day {self.start_day + self.ramp_days}"


Trend = Annotated[NewClass | StyleShift | PriorShift, Field(discriminator="kind")]
_TREND = TypeAdapter(Trend)


def parse_trend(spec: str) -> NewClass | StyleShift | PriorShift:
    """Parse ``kind:key=value,...``, e.g. ``new_class:name=meme,start_day=10,share=0.2``.

    ``prior_shift`` takes its weights as ``class*multiplier`` pairs joined by ``+``:
    ``prior_shift:start_day=5,weights=fitness*3+food*0.5``.
    """
    kind, _, rest = spec.partition(":")
    fields: dict[str, object] = {"kind": kind.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"trend {spec!r}: expected key=value, got {item!r}")
        if key.strip() == "weights":
            try:
                fields["weights"] = {k: float(v) for k, v in (w.split("*") for w in value.split("+"))}
            except ValueError:
                raise ConfigError(f"trend {spec!r}: weights look like fitness*3+food*0.5") from None
        else:
            fields[key.strip()] = value.strip()
    try:
        return _TREND.validate_python(fields)
    except ValueError as err:
        raise ConfigError(f"trend {spec!r}: {_first_error(err)}") from None


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "kind"
        return f"{where}: {first['msg']}"
    return str(err)


def check_trends(base_tags: tuple[str, ...], trends: list[NewClass | StyleShift | PriorShift]) -> None:
    """Refuse schedules that cannot be simulated, with the reason."""
    names = [t.name for t in trends if isinstance(t, NewClass)]
    clash = set(names) & set(base_tags) or {n for n in names if names.count(n) > 1}
    if clash:
        raise ConfigError(f"new class name {sorted(clash)[0]!r} is already a tag")
    if sum(t.share for t in trends if isinstance(t, NewClass)) >= 1:
        raise ConfigError("new classes together take the whole feed; their shares must sum below 1")
    if sum(t.share for t in trends if isinstance(t, StyleShift)) > 1:
        raise ConfigError("filter trends together exceed every post; their shares must sum to at most 1")
    for t in trends:
        if isinstance(t, PriorShift):
            unknown = set(t.weights) - set(base_tags) - set(names)
            if unknown:
                raise ConfigError(f"prior shift names unknown class {sorted(unknown)[0]!r}")
            if any(w < 0 for w in t.weights.values()):
                raise ConfigError("prior shift weights must be non-negative")


def class_shares(
    day: int, base_priors: dict[str, float], trends: list[NewClass | StyleShift | PriorShift]
) -> dict[str, float]:
    """Each class's expected share of the posts of ``day``; the shares sum to 1.

    Classes of trends that have not started yet are present with share 0, so every
    day has the same keys, in the same order: base classes, then new classes.
    """
    new = {t.name: t.share * t.strength(day) for t in trends if isinstance(t, NewClass)}
    weights = dict(base_priors)
    for t in trends:
        if isinstance(t, PriorShift):
            s = t.strength(day)
            for name, mult in t.weights.items():
                if name in weights:
                    weights[name] *= 1 + (mult - 1) * s
    total = sum(weights.values())
    rest = 1.0 - sum(new.values())
    return {**{k: rest * w / total for k, w in weights.items()}, **new}


def filter_shares(day: int, trends: list[NewClass | StyleShift | PriorShift]) -> dict[str, float]:
    """The probability that a post of ``day`` carries each trending filter (at most one)."""
    shares: dict[str, float] = {}
    for t in trends:
        if isinstance(t, StyleShift):
            shares[t.filter] = shares.get(t.filter, 0.0) + t.share * t.strength(day)
    return shares


def apply_filter(pixels: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """Apply a trending filter to an (H, W, 3) float image in 0..255."""
    if name == "vintage":  # sepia toning (the classic Microsoft sepia matrix), faded, vignetted
        sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
        out = 0.85 * (pixels @ sepia.T) + 0.15 * pixels
        out = out * 0.8 + 30
        h, w = pixels.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
        return out * np.clip(1.15 - 0.45 * r**2, 0.4, 1.0)[..., None]
    if name == "noir":  # high-contrast black and white
        luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.repeat(((luma - 128) * 1.5 + 128)[..., None], 3, axis=2)
    if name == "neon":  # channel rotation and boosted saturation
        out = pixels[..., [2, 0, 1]]
        mean = out.mean(axis=2, keepdims=True)
        return mean + (out - mean) * 1.9
    if name == "grain":  # heavy film grain, washed-out colours
        mean = pixels.mean(axis=2, keepdims=True)
        return 0.5 * pixels + 0.5 * mean + rng.normal(0, 28, size=pixels.shape)
    raise ConfigError(f"unknown filter {name!r}; known: {', '.join(FILTERS)}")
