"""The trend schedule: exact shares per day, combined events, and refused schedules."""

from __future__ import annotations

import pytest

from components.errors import ConfigError
from components.simulator.feed import FeedSpec
from components.simulator.scenes import BASE_TAGS
from components.simulator.trends import NewClass, PriorShift, StyleShift, check_trends, class_shares, parse_trend

pytestmark = pytest.mark.unit

UNIFORM = {tag: 1.0 for tag in BASE_TAGS}


def test_new_class_ramps_linearly_then_holds() -> None:
    trend = NewClass(name="meme", start_day=10, ramp_days=4, share=0.2)
    meme = [class_shares(day, UNIFORM, [trend])["meme"] for day in range(8, 17)]
    assert meme == pytest.approx([0, 0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.2, 0.2])
    day12 = class_shares(12, UNIFORM, [trend])
    assert sum(day12.values()) == pytest.approx(1.0)
    assert day12["food"] == pytest.approx((1 - 0.12) / 8)  # the rest is split evenly


def test_step_event_when_ramp_is_zero() -> None:
    trend = NewClass(name="meme", start_day=3, ramp_days=0, share=0.5)
    assert [class_shares(d, UNIFORM, [trend])["meme"] for d in (2, 3, 9)] == [0, 0.5, 0.5]


def test_prior_shift_multiplies_a_class_weight() -> None:
    shift = PriorShift(start_day=5, ramp_days=1, weights={"fitness": 3.0})
    assert class_shares(4, UNIFORM, [shift])["fitness"] == pytest.approx(1 / 8)
    assert class_shares(5, UNIFORM, [shift])["fitness"] == pytest.approx(2 / 9)  # half way: weight 2
    assert class_shares(6, UNIFORM, [shift])["fitness"] == pytest.approx(3 / 10)
    assert class_shares(6, UNIFORM, [shift])["food"] == pytest.approx(1 / 10)


def test_events_combine() -> None:
    spec = FeedSpec(
        trends=[
            PriorShift(start_day=0, weights={"food": 0.0}),
            NewClass(name="meme", start_day=0, share=0.25),
            NewClass(name="pixels", look="pixel_art", start_day=0, share=0.15),
            StyleShift(filter="noir", start_day=1, share=0.2),
            StyleShift(filter="neon", start_day=1, ramp_days=1, share=0.4),
        ]
    )
    shares = spec.class_shares(0)
    assert list(shares) == [*BASE_TAGS, "meme", "pixels"]
    assert shares["food"] == 0 and shares["meme"] == 0.25 and shares["pixels"] == 0.15
    assert shares["cars"] == pytest.approx(0.6 / 7)
    assert spec.filter_shares(0) == {"noir": 0.0, "neon": 0.0}
    assert spec.filter_shares(1) == pytest.approx({"noir": 0.2, "neon": 0.2})
    assert spec.filter_shares(2) == pytest.approx({"noir": 0.2, "neon": 0.4})


def test_parse_trend_spec() -> None:
    assert parse_trend("new_class:name=memes,look=pixel_art,start_day=4,ramp_days=2,share=0.1") == NewClass(
        name="memes", look="pixel_art", start_day=4, ramp_days=2, share=0.1
    )
    assert parse_trend("prior_shift:start_day=2,weights=fitness*3+food*0.5").weights == {"fitness": 3.0, "food": 0.5}
    assert parse_trend("style_shift:filter=grain,start_day=1").filter == "grain"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("new_class:share=2,start_day=1", "share"),
        ("style_shift:filter=sepia,start_day=1", "filter"),
        ("heatwave:start_day=1", "kind"),
        ("new_class:start_day", "expected key=value"),
        ("prior_shift:start_day=1,weights=fitness", "weights look like"),
    ],
)
def test_parse_trend_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_trend(spec)


@pytest.mark.parametrize(
    ("trends", "message"),
    [
        ([NewClass(name="food", start_day=1)], "already a tag"),
        ([NewClass(name="a", start_day=1, share=0.6), NewClass(name="b", start_day=1, share=0.5)], "sum below 1"),
        (
            [StyleShift(filter="noir", start_day=1, share=0.7), StyleShift(filter="neon", start_day=1, share=0.7)],
            "at most 1",
        ),
        ([PriorShift(start_day=1, weights={"boats": 2.0})], "unknown class 'boats'"),
    ],
)
def test_impossible_schedules_are_refused(trends: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_trends(BASE_TAGS, trends)
