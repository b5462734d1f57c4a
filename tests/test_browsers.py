"""When a browser test may skip: on a developer's machine without Chromium, never under CI (tests/browsers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browsers import NO_CHROMIUM, find_chromium, under_ci

pytestmark = pytest.mark.unit

pytest_plugins = ("pytester",)


@pytest.mark.parametrize(
    ("value", "ci"),
    [(None, False), ("", False), ("0", False), ("false", False), ("False", False), ("true", True), ("1", True),
     ("yes", True)],
)  # fmt: skip
def test_ci_is_any_value_but_empty_zero_or_false(value: str | None, ci: bool) -> None:
    assert under_ci({} if value is None else {"CI": value}) is ci


def test_chromium_is_found_on_the_path_or_where_trendloop_chromium_says(tmp_path: Path) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "chromium").write_text("#!/bin/sh\n")
    (on_path / "chromium").chmod(0o755)
    elsewhere = tmp_path / "my-chromium"
    elsewhere.write_text("#!/bin/sh\n")

    assert find_chromium({"PATH": str(on_path)}) == str(on_path / "chromium")
    assert find_chromium({"PATH": str(tmp_path / "empty")}) is None
    assert find_chromium({"PATH": str(on_path), "TRENDLOOP_CHROMIUM": str(elsewhere)}) == str(elsewhere)
    # a wrong TRENDLOOP_CHROMIUM is not papered over by the PATH's: the tests would drive another browser
    assert find_chromium({"PATH": str(on_path), "TRENDLOOP_CHROMIUM": str(tmp_path / "nowhere")}) is None


@pytest.mark.parametrize(("ci", "outcome"), [("true", "errors"), (None, "skipped")])
def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: str
) -> None:
    """The real fixtures, in a pytest of their own, with no browser to be found."""
    pytester.makeconftest("from tests.browsers import browser, chromium  # noqa: F401\n")
    pytester.makepyfile("def test_draws_the_page(browser):\n    assert browser is not None\n")
    monkeypatch.setenv("TRENDLOOP_CHROMIUM", str(pytester.path / "nowhere"))
    monkeypatch.setenv("PATH", os.path.dirname(os.__file__))  # no chromium there either
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")

    result.assert_outcomes(**{outcome: 1})
    if outcome == "errors":
        result.stdout.fnmatch_lines([f"*{NO_CHROMIUM} (CI is set: browser tests may not skip)*"])
    else:
        result.stdout.fnmatch_lines([f"SKIPPED*{NO_CHROMIUM}*"])
