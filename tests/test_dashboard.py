"""The A/B dashboard: its page and files, the routes that serve them, and the page in a real headless browser
(the system's Chromium through Playwright; see tests/browsers.py for when a missing one skips or fails).

The reports rendered are the analysis's own (``serving.report`` over simulated serving logs, see
tests/ab_logs.py), so every verdict on screen follows from the numbers beside it. Tests that need no
browser run without one. Every browser test also asserts that the page raised no JavaScript error and
logged no console error.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import json
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import unescape
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from personal import PSEUDONYMS
from PIL import Image

from components.data.predlog import PredictionLog
from components.errors import TrendloopError
from serving.access import COOKIE, TokenFile
from serving.api import build_api
from serving.dashboard import render_dashboard
from serving.eventlog import EventWriter, FeedbackLog
from serving.router import RequestBook, Router
from tests.ab_logs import BROKEN_SPLIT, CHAMPION_ONLY, HOURS, SLOW, WIN, Scenario, computed_report, report_with_no_test
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
MINUS = "\u2212"
DASH = "\u2014"
HOSTILE_SCRIPT = "</script><script>window.pwned=1</script>"
HOSTILE_IMG = '<img src=x onerror="window.pwned=2">'
MAX_WEB_LINES = 100  # lines of HTML/CSS/JS a Python file of the packages may hold in string literals
Reports = Callable[[Scenario], dict]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Reports:
    """The computed report of a scenario (computed once per module; each call gets its own copy)."""
    made: dict[Scenario, dict] = {}

    def report(scenario: Scenario) -> dict:
        if scenario not in made:
            made[scenario] = computed_report(tmp_path_factory.mktemp("ab"), scenario)
        return copy.deepcopy(made[scenario])

    return report


# --- how the page writes numbers (the oracle for what must be on screen) ----------------------------


def signed(v: float, body: str, digits: int) -> str:
    """No sign on what rounds to zero: the page does not show "+0.0%"."""
    return body if float(f"{abs(v):.{digits}f}") == 0 else ("+" if v > 0 else MINUS) + body


def pct(v: float, digits: int) -> str:
    return (MINUS if v < 0 else "") + f"{abs(v) * 100:.{digits}f}%"


def signed_pct(v: float, digits: int) -> str:
    return signed(v * 100, f"{abs(v) * 100:.{digits}f}%", digits)


def pp(v: float) -> str:
    return signed(v * 100, f"{abs(v) * 100:.2f} pp", 2)


def ms(v: float) -> str:
    return f"{v:.1f} ms" if abs(v) < 10 else f"{v:.0f} ms"


def fraction(v: float, sign: bool = False) -> str:
    """A guardrail's value or limit: a percentage with two decimals below 1%, else one."""
    digits = 2 if abs(v) < 0.01 else 1
    return signed_pct(v, digits) if sign else pct(v, digits)


# --- the browser side ---------------------------------------------------------------------------------


@dataclass
class Tab:
    """A browser page and everything it reported as an error."""

    page: Any
    errors: list[str] = field(default_factory=list)

    def show(self, html: str) -> None:
        self.page.set_content(html, wait_until="load")
        self.page.wait_for_selector("body:not([data-renders='0'])", timeout=5000)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text().strip()


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    tab = Tab(page)
    page.on("pageerror", lambda exc: tab.errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: tab.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    yield tab
    context.close()


def path_points(d: str) -> list[tuple[float, float]]:
    """The vertices of an SVG path made of M/L commands."""
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]\s*(-?[\d.]+)[ ,](-?[\d.]+)", d)]


@pytest.mark.integration
def test_a_winning_challenger_renders_every_value_of_its_report(tab: Tab, reports: Reports) -> None:
    report = reports(WIN)
    assert report["decision"]["verdict"] == "promote"  # what the scenario was built to show
    tab.show(render_dashboard(report, report_url=None))
    page = tab.page

    assert tab.text("#headline") == report["decision"]["headline"]
    assert page.get_attribute("#verdict", "data-verdict") == "promote"
    assert "tone-good" in page.get_attribute("#verdict", "class")
    assert tab.text("#verdict-label").lower() == "promote the challenger"
    assert page.locator("#reasons li").all_inner_texts() == report["decision"]["reasons"]

    assert tab.text("#champion-version") == "v3"
    assert tab.text("#challenger-version") == "v4"
    assert tab.text("#experiment-id") == report["experiment"]["id"]
    assert tab.text("#started-at") == "12 Mar 2025, 09:00 UTC"
    assert tab.text("#generated-at") == "13 Mar 2025, 09:00 UTC"
    assert tab.text("#split") == "50% champion / 50% challenger"
    assert page.locator("#ended").is_hidden()

    def cell(arm: str, metric: str) -> str:
        return tab.text(f"#arms td[data-arm='{arm}'][data-metric='{metric}']")

    champion, challenger = report["arms"]["champion"], report["arms"]["challenger"]
    assert page.locator("#arms th[data-arm]").all_inner_texts() == ["Champion v3", "Challenger v4"]
    for arm, numbers in (("champion", champion), ("challenger", challenger)):
        assert cell(arm, "users") == f"{numbers['users']:,}"
        assert cell(arm, "exposures") == f"{numbers['exposures']:,}"
        assert cell(arm, "engagements") == f"{numbers['engagements']:,}"
        assert cell(arm, "engagement_rate") == pct(numbers["engagement_rate"], 2)
        assert cell(arm, "report_rate") == pct(numbers["report_rate"], 2)
        for latency in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            assert cell(arm, latency) == ms(numbers[latency])
    assert cell("difference", "engagement_rate") == pp(challenger["engagement_rate"] - champion["engagement_rate"])
    slower = challenger["latency_p95_ms"] - champion["latency_p95_ms"]
    assert cell("difference", "latency_p95_ms") == (
        f"{signed(slower, ms(abs(slower)), 0)} ({signed_pct(slower / champion['latency_p95_ms'], 1)})"
    )

    lift = report["lift"]
    assert lift["cs_low"] > 0.01  # the lower bound clears the rule's minimum lift: hence "promote"
    assert tab.text("#lift-relative") == signed_pct(lift["relative"], 1)
    assert "up" in page.get_attribute("#lift-relative", "class")
    assert tab.text("#lift-absolute") == f"{pp(lift['absolute'])} in engagement rate"
    assert tab.text("#lift-cs") == f"{signed_pct(lift['cs_low'], 1)} to {signed_pct(lift['cs_high'], 1)}"
    assert tab.text("#lift-ci") == f"{signed_pct(lift['ci_low'], 1)} to {signed_pct(lift['ci_high'], 1)}"
    assert tab.text("#lift-cs-label") == "Always-valid 95% interval (used for the verdict)"
    assert tab.text("#lift-ci-label") == "Fixed-horizon 95% interval"  # the analysis says "fixed": not said twice
    assert tab.text("#lift-p") == "< 0.001"
    assert tab.text("#lift-avp") == f"{lift['always_valid_p']:.3f}"
    assert tab.text("#lift-cuped") == f"yes, {pct(lift['variance_reduction'], 1)} less variance"
    # the interval plot: the always-valid bar spans its bounds, the zero line sits left of it
    bar = page.locator("#lift-plot line.interval.cs")
    assert (float(bar.get_attribute("data-low")), float(bar.get_attribute("data-high"))) == (
        lift["cs_low"],
        lift["cs_high"],
    )
    zero_x = float(page.get_attribute("#lift-plot line.zero-line", "x1"))
    assert zero_x < float(bar.get_attribute("x1")) < float(bar.get_attribute("x2"))

    assert page.get_attribute("#srm", "data-ok") == "true"
    assert tab.text("#srm-status") == "OK"
    assert tab.text("#srm-observed") == pct(report["srm"]["observed_share"], 1)
    assert tab.text("#srm-p") == f"{report['srm']['p_value']:.3f}"
    assert page.locator("#srm-warning").is_hidden()

    for rail in report["guardrails"]:
        row = page.locator(f"#guardrails tr[data-name='{rail['name']}']")
        assert (row.get_attribute("data-ok"), row.locator("td.status").inner_text().strip()) == ("true", "OK")
        assert row.locator("td.value").inner_text().strip() == fraction(rail["value"], sign=True)
        assert row.locator("td.limit").inner_text().strip() == fraction(rail["limit"])
        assert row.locator(".detail").inner_text().strip() == rail["detail"]
    assert tab.text("#guardrails-summary") == "All 2 guardrails hold."

    for chart in ("#chart-exposures", "#chart-engagement"):
        paths = page.locator(f"{chart} path.series")
        assert [paths.nth(i).get_attribute("data-arm") for i in range(paths.count())] == ["champion", "challenger"]
        for i in range(2):
            points = path_points(paths.nth(i).get_attribute("d"))
            assert len(points) == HOURS
            assert [p[0] for p in points] == sorted(p[0] for p in points)  # left to right in time
        assert "per 1-hour bucket" in page.locator(chart).text_content()
        assert "not cumulative" in page.locator(chart).text_content()
        assert "Champion v3" in page.locator(chart).text_content()
    # higher is up: the hour with the most challenger exposures is drawn highest
    rows = [r for r in report["timeline"] if r["arm"] == "challenger"]
    ys = [y for _, y in path_points(page.get_attribute("#chart-exposures path[data-arm='challenger']", "d"))]
    assert ys.index(min(ys)) == max(range(HOURS), key=lambda i: rows[i]["exposures"])

    assert tab.text("#rule dd[data-key='min_users_per_arm']") == "1,000"
    assert tab.text("#rule dd[data-key='min_lift']") == "+1.0%"
    assert tab.text("#rule dd[data-key='alpha']") == "0.05"
    assert tab.text("#rule dd[data-key='max_latency_increase']") == "10.0%"
    assert tab.text("#rule div[data-key='tau'] dt") == "Tau"  # keys the page has no label for render too
    assert tab.text("#rule dd[data-key='tau']") == "0.05"
    assert page.locator("#error").is_hidden()
    assert tab.errors == []


@pytest.mark.integration
def test_a_slower_challenger_is_rolled_back_for_its_breached_guardrail(tab: Tab, reports: Reports) -> None:
    report = reports(SLOW)
    assert report["lift"]["cs_low"] > 0.01  # it would have won on engagement
    tab.show(render_dashboard(report, report_url=None))
    page = tab.page

    assert page.get_attribute("#verdict", "data-verdict") == "rollback"
    assert "tone-bad" in page.get_attribute("#verdict", "class")
    assert tab.text("#verdict-label").lower() == "roll back to the champion"
    assert tab.text("#headline") == report["decision"]["headline"]
    latency = report["guardrails"][0]
    breached = page.locator("#guardrails tr[data-name='latency_p95']")
    assert breached.get_attribute("data-ok") == "false"
    assert breached.locator("td.status").inner_text().strip() == "Breached"
    assert breached.locator("td.value").inner_text().strip() == fraction(latency["value"], sign=True)
    assert latency["value"] > latency["limit"]
    assert breached.locator("td.limit").inner_text().strip() == "10.0%"
    assert page.locator("#guardrails tr[data-name='report_rate']").get_attribute("data-ok") == "true"
    assert tab.text("#guardrails-summary") == "1 of 2 guardrails breached."
    assert tab.errors == []


@pytest.mark.integration
def test_a_broken_split_warns_that_no_verdict_can_be_trusted(tab: Tab, reports: Reports) -> None:
    report = reports(BROKEN_SPLIT)
    tab.show(render_dashboard(report, report_url=None))
    page = tab.page

    warning = page.locator("#srm-warning")
    assert warning.is_visible()
    assert "do not trust any verdict" in warning.inner_text()
    assert f"observed {pct(report['srm']['observed_share'], 1)}" in warning.inner_text()
    assert page.get_attribute("#srm", "data-ok") == "false"
    assert tab.text("#srm-status") == "Failed"
    assert tab.text("#srm-p") == "< 0.001"
    assert page.get_attribute("#verdict", "data-verdict") == "blocked"
    assert "untrusted" in page.get_attribute("#verdict", "class")
    assert tab.text("#headline") == report["decision"]["headline"]
    assert tab.text("#ended") == "Ended 13 Mar 2025, 08:00 UTC (stopped)"
    assert tab.errors == []


def dashboard_api(
    tmp_path: Path, answer: Callable[[], dict], report_token: Callable[[], str] | None = None
) -> tuple[FastAPI, Router]:
    """The serving app's FastAPI (no Ray, no model); its /ab/report.json answers ``answer()`` each time."""
    predictions = PredictionLog(tmp_path / "predictions")
    writers = EventWriter(predictions, "dash"), EventWriter(FeedbackLog(tmp_path / "feedback"), "dash")
    router = Router({}, *writers, RequestBook(predictions), pseudonyms=PSEUDONYMS)
    return build_api(router, {}, answer, report_ttl_s=0.0, refresh_s=1, report_token=report_token), router


@contextmanager
def served(tmp_path: Path, answer: Callable[[], dict], report_token: Callable[[], str] | None = None) -> Iterator[str]:
    """``dashboard_api`` in uvicorn on a free port (its own thread and event loop); yields its URL."""
    api, router = dashboard_api(tmp_path, answer, report_token)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        assert router.close() == 0


@pytest.mark.integration
def test_a_browser_opens_the_guarded_dashboard_with_the_token_once_and_keeps_it_in_a_cookie_no_script_reads(
    tab: Tab, reports: Reports, tmp_path: Path
) -> None:
    token = "browser-token-of-enough-length"
    (tmp_path / "report.token").write_text(token + "\n")
    win = reports(WIN)
    refused: list[tuple[str, int]] = []
    tab.page.on("response", lambda r: refused.append((r.url.split("/", 3)[3], r.status)) if r.status >= 400 else None)
    with served(tmp_path, lambda: win, TokenFile(tmp_path / "report.token").read) as url:
        assert tab.page.goto(f"{url}/ab").status == 401  # no token yet
        assert "needs the report token" in tab.page.content()
        opened = tab.page.goto(f"{url}/ab?token={token}")
        assert opened.status == 200 and tab.page.url == f"{url}/ab"  # redirected: the token left the address
        # the script and the stylesheet came with the cookie, and so do the report's fetches: a refresh renders again
        tab.page.wait_for_selector("body:not([data-renders='0']):not([data-renders='1'])", timeout=5000)
        assert tab.text("#headline") == win["decision"]["headline"]
        assert tab.page.eval_on_selector("#verdict", "e => getComputedStyle(e).borderLeftColor") == "rgb(21, 128, 61)"
        assert tab.page.locator("#error").is_hidden()
        (cookie,) = tab.page.context.cookies()
        assert (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == (
            COOKIE,
            "/ab",
            True,
            "Strict",
        )
        assert cookie["value"] != token and tab.page.evaluate("document.cookie") == ""  # no script reads it
    # refused: the tokenless visit, and the favicon its JSON answer has not (the page has its own); no more
    assert refused[0] == ("ab", 401) and set(refused[1:]) <= {("favicon.ico", 404)}
    assert [e for e in tab.errors if "status of 401" not in e and "status of 404" not in e] == []
    tab.errors.clear()


@pytest.mark.integration
def test_the_served_page_fetches_its_report_and_a_failed_refresh_keeps_the_last_data(
    tab: Tab, reports: Reports, tmp_path: Path
) -> None:
    win, slow = reports(WIN), reports(SLOW)
    answers: list[dict | None] = [win]

    def answer() -> dict:
        if answers[-1] is None:
            raise TrendloopError("the prediction log is unreadable")
        return answers[-1]

    with served(tmp_path, answer) as url:
        tab.page.goto(f"{url}/ab")  # the page, its stylesheet and script from the app, under its policy header
        tab.page.wait_for_selector("body:not([data-renders='0'])", timeout=5000)
        assert tab.text("#headline") == win["decision"]["headline"]
        rate = win["arms"]["challenger"]["engagement_rate"]
        assert tab.text("#arms td[data-arm='challenger'][data-metric='engagement_rate']") == pct(rate, 2)
        # the stylesheet applied: the verdict card has the winning tone's border, not the default grey
        assert tab.page.eval_on_selector("#verdict", "e => getComputedStyle(e).borderLeftColor") == "rgb(21, 128, 61)"
        assert tab.page.locator("#error").is_hidden()

        answers.append(None)
        tab.page.wait_for_selector("#error", state="visible", timeout=5000)
        banner = tab.text("#error")
        assert "Could not update the report" in banner
        assert "HTTP 503" in banner
        assert "Showing the last good data" in banner
        assert tab.text("#headline") == win["decision"]["headline"]  # the last good data stays

        # the next good answer replaces the data and clears the banner
        answers.append(slow)
        tab.page.wait_for_selector("#error", state="hidden", timeout=5000)
        assert tab.text("#headline") == slow["decision"]["headline"]
        assert tab.page.get_attribute("#verdict", "data-verdict") == "rollback"

        # the policy is in force: a script written into the page does not run, and the browser says why
        tab.page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';"
                          " document.body.append(s); }")  # fmt: skip
        assert tab.page.evaluate("typeof window.pwned") == "undefined"

    # the browser logs each 503 it got as a failed resource, and the script once per policy that refused it
    # (the header's and the meta tag's: both are in force); nothing else may be logged
    failed = [e for e in tab.errors if "status of 503" in e]
    refused = [e for e in tab.errors if "Content Security Policy directive 'script-src 'self''" in e and "blocked" in e]
    assert failed and len(refused) == 2
    assert [e for e in tab.errors if e not in failed + refused] == []
    tab.errors.clear()


@pytest.mark.integration
def test_hostile_strings_render_as_text_and_run_nothing(tab: Tab, reports: Reports) -> None:
    report = reports(WIN)
    report["experiment"]["id"] = "exp-<svg onload=window.pwned=3>"
    report["decision"]["headline"] = HOSTILE_IMG
    report["decision"]["reasons"] = [HOSTILE_SCRIPT, "<!-- <script>window.pwned=4</script>", "a\u2028b"]
    report["guardrails"][0]["name"] = HOSTILE_SCRIPT
    report["guardrails"][0]["ok"] = False
    report["guardrails"][0]["detail"] = HOSTILE_IMG
    report["rule"][HOSTILE_IMG] = HOSTILE_SCRIPT
    report["lift"]["ci_method"] = "</style><script>window.pwned=5</script>"
    for row in report["timeline"]:
        row["start"] = HOSTILE_IMG if row["start"].endswith("T09:00:00+00:00") else row["start"]
    html = render_dashboard(report, report_url=None)

    assert "window.pwned" in html  # embedded, but only inside the JSON data block, escaped
    assert html.count("</script>") == 3 and "<img" not in html and "<svg onload" not in html

    tab.show(html)
    page = tab.page
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("JSON.parse(document.getElementById('report').textContent)") == json.loads(json.dumps(report))
    assert tab.text("#headline") == HOSTILE_IMG
    assert page.locator("#reasons li").all_inner_texts()[:2] == [HOSTILE_SCRIPT, "<!-- <script>window.pwned=4</script>"]
    assert tab.text("#experiment-id") == "exp-<svg onload=window.pwned=3>"
    assert page.locator("#guardrails tr[data-ok='false'] td").first.text_content() == HOSTILE_SCRIPT + HOSTILE_IMG
    assert page.locator(f"#rule dd[data-key='{HOSTILE_IMG}']").inner_text() == HOSTILE_SCRIPT
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 3
    assert page.locator("svg[onload], [onerror]").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert tab.errors == []


def nulls_everywhere(value: Any) -> Any:
    """The same shape with every leaf null."""
    if isinstance(value, dict):
        return {k: nulls_everywhere(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nulls_everywhere(v) for v in value]
    return None


@pytest.mark.parametrize("case", ["empty", "all-null", "wrong-types", "no-experiment"])
@pytest.mark.integration
def test_a_report_full_of_nulls_renders_without_errors(tab: Tab, reports: Reports, tmp_path: Path, case: str) -> None:
    report = {
        "empty": lambda: {},
        "all-null": lambda: nulls_everywhere(reports(WIN)),
        "wrong-types": lambda: {"arms": [], "timeline": {}, "rule": 3},
        "no-experiment": lambda: report_with_no_test(tmp_path),  # what the serving app answers while no test runs
    }[case]()
    tab.show(render_dashboard(report, report_url=None))
    assert tab.errors == []
    assert tab.text("#arms td[data-arm='challenger'][data-metric='engagement_rate']") == DASH
    assert tab.text("#srm-status") == "Not checked"
    assert tab.page.locator("#srm-warning").is_hidden()
    assert tab.page.locator("#error").is_hidden()
    assert tab.text("#challenger-version") == DASH
    assert tab.text("#lift-cs") == DASH
    if case == "no-experiment":
        assert tab.text("#headline") == report["decision"]["headline"]
        assert tab.text("#verdict-label").lower() == "no a/b test running"


@pytest.mark.integration
def test_no_challenger_yet_shows_the_champion_alone(tab: Tab, reports: Reports) -> None:
    report = reports(CHAMPION_ONLY)
    tab.show(render_dashboard(report, report_url=None))
    assert tab.text("#verdict-label") == "NOT ENOUGH DATA YET"  # shown in capitals by CSS
    assert tab.text("#headline") == report["decision"]["headline"]
    rate = report["arms"]["champion"]["engagement_rate"]
    assert tab.text("#arms td[data-arm='champion'][data-metric='engagement_rate']") == pct(rate, 2)
    assert tab.text("#arms td[data-arm='challenger'][data-metric='users']") == "0"
    for metric in ("engagement_rate", "latency_p99_ms"):  # NaN in the analysis, null in its JSON
        assert tab.text(f"#arms td[data-arm='challenger'][data-metric='{metric}']") == DASH
    assert tab.text("#challenger-version") == DASH
    for chart in ("#chart-exposures", "#chart-engagement"):
        champion = tab.page.get_attribute(f"{chart} path[data-arm='champion']", "d")
        assert len(path_points(champion)) == HOURS
    # an arm with no exposures has no engagement rate to draw
    assert tab.page.get_attribute("#chart-engagement path[data-arm='challenger']", "data-points") == "0"
    # no lift: the plot keeps its axis (zero and the rule's minimum lift) with neither interval drawn
    assert tab.text("#lift-relative") == DASH
    assert tab.page.locator("#lift-plot line.interval, #lift-plot circle.estimate").count() == 0
    assert tab.page.locator("#lift-plot text", has_text="not available").count() == 2
    guardrails = tab.page.locator("#guardrails td.status").all_inner_texts()
    assert [g.strip() for g in guardrails] == ["Unknown", "Unknown"]
    assert tab.errors == []


@pytest.mark.integration
def test_a_time_without_a_zone_is_read_as_utc(tab: Tab, reports: Reports) -> None:
    report = reports(WIN)
    report["generated_at"] = "2025-03-13T09:05:00.123456"  # as some writers leave it
    tab.show(render_dashboard(report, report_url=None))
    assert tab.text("#generated-at") == "13 Mar 2025, 09:05 UTC"
    assert tab.errors == []


@pytest.mark.integration
def test_screenshot_of_the_dashboard(tab: Tab, reports: Reports) -> None:
    """Saved for people to look at (test-artifacts/ is git-ignored); it must show a real, many-coloured page."""
    ARTIFACTS.mkdir(exist_ok=True)
    tab.show(render_dashboard(reports(WIN), report_url=None))
    shot = ARTIFACTS / "dashboard.png"
    tab.page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 1200
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert shot.stat().st_size > 50_000
    assert colours is not None and len(colours) > 200

    # on a phone the page reflows to one column and nothing sticks out sideways
    tab.page.set_viewport_size({"width": 390, "height": 844})
    width = "document.getElementById('chart-exposures').viewBox.baseVal.width"
    deadline = time.monotonic() + 5
    # the charts redraw at the new width; polled, as wait_for_function needs eval, which the page's CSP forbids
    while tab.page.evaluate(width) >= 390 and time.monotonic() < deadline:
        tab.page.wait_for_timeout(50)
    assert tab.page.evaluate(width) < 390
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 390
    tab.page.screenshot(path=str(ARTIFACTS / "dashboard-mobile.png"), full_page=True)
    assert tab.errors == []


# --- no browser needed ----------------------------------------------------------------------------------


def static(name: str) -> str:
    return (resources.files("serving") / "static" / name).read_text(encoding="utf-8")


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def meta_policy(html: str) -> str:
    return unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))


@pytest.mark.unit
def test_the_app_serves_the_page_and_its_files_under_a_policy_with_no_inline_code(tmp_path: Path) -> None:
    api, router = dashboard_api(tmp_path, dict)
    with TestClient(api) as client:
        page = client.get("/ab")
        files = {name: client.get(f"/ab/static/{name}") for name in ("dashboard.css", "dashboard.js")}
        absent = [client.get(f"/ab/static/{name}").status_code for name in ("dashboard.html", "..%2Fapi.py", "x.js")]
    assert router.close() == 0

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'"
    )
    assert page.headers["content-security-policy"] == policy + "; frame-ancestors 'none'"
    assert meta_policy(page.text) == policy  # the same policy travels with the page (a meta tag cannot frame-guard)
    assert '<link rel="stylesheet" href="/ab/static/dashboard.css">' in page.text
    assert '<script src="/ab/static/dashboard.js"></script>' in page.text
    # nothing inline that 'self' would refuse: no style element or attribute, no event handler, and every
    # script element either loads a file or is a JSON data block (which never runs)
    assert "<style" not in page.text and not re.search(r"\s(style|on\w+)=", page.text)
    scripts = re.findall(r"<script\b([^>]*)>", page.text)
    assert len(scripts) == 3
    assert all(re.search(r'\bsrc="|type="application/json"', attributes) for attributes in scripts)
    assert json.loads(re.search(r'id="config">(.*?)</script>', page.text).group(1)) == {
        "report_url": "/ab/report.json",
        "refresh_s": 1,
    }

    assert files["dashboard.css"].headers["content-type"] == "text/css; charset=utf-8"
    assert files["dashboard.js"].headers["content-type"] == "text/javascript; charset=utf-8"
    for name, response in files.items():
        assert response.status_code == 200
        assert response.text == static(name)  # the package's file, as installed
        assert response.headers["x-content-type-options"] == "nosniff"
    assert absent == [404, 404, 404]  # only the two files, nothing else of the package


@pytest.mark.unit
def test_the_self_contained_page_inlines_its_files_allowed_by_their_hashes() -> None:
    html = render_dashboard(None, report_url=None)
    assert f"<style>{static('dashboard.css')}</style>" in html
    assert f"<script>{static('dashboard.js')}</script>" in html
    policy = meta_policy(html)
    assert f"script-src {sha256(static('dashboard.js'))};" in policy
    assert f"style-src {sha256(static('dashboard.css'))};" in policy
    assert "unsafe" not in policy and "'self'" not in policy.split("connect-src")[0]


@pytest.mark.unit
def test_render_dashboard_rejects_a_negative_refresh() -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        render_dashboard({}, refresh_s=-1)


@pytest.mark.unit
def test_render_dashboard_leaves_the_report_unchanged(reports: Reports) -> None:
    report = reports(WIN)
    before = copy.deepcopy(report)
    render_dashboard(report)
    assert report == before


@pytest.mark.unit
def test_the_page_may_fetch_only_from_its_own_origin_and_the_reports() -> None:
    def connect_src(html: str) -> str:
        return next(d for d in meta_policy(html).split("; ") if d.startswith("connect-src"))

    assert connect_src(render_dashboard(None)) == "connect-src 'self'"
    assert connect_src(render_dashboard(None, "https://ab.example:8443/r.json")) == (
        "connect-src 'self' https://ab.example:8443"
    )
    hostile = 'https://x"><script>window.pwned=1</script>/r.json'
    html = render_dashboard(None, hostile)
    assert connect_src(html) == "connect-src 'self'"
    assert html.count("<script") == 3  # the URL sits escaped in the config block
    assert json.loads(re.search(r'<script type="application/json" id="config">(.*?)</script>', html).group(1)) == {
        "report_url": hostile,
        "refresh_s": 30,
    }


# --- web code stays out of Python strings -----------------------------------------------------------------

# A string "holds web code" when it carries an HTML/XML tag, a CSS rule (``selector { prop: value; }``)
# or a JavaScript idiom; such a string counts ALL its non-blank lines, summed over the file. Whole
# strings, not matching lines: most lines of a template, a stylesheet or a script carry no marker of
# their own (a line of text, a closing brace), so counting matching lines would let 800 lines pass as
# 200. Summed per file: splitting a page into many small strings hides nothing. Docstrings are skipped
# (they may show markup as an example). Stray matches (a "<home>" in a help text) cost a line each,
# far below the limit.
WEB_CODE = re.compile(
    r"<(?:!DOCTYPE|!--|/?[A-Za-z][\w-]*(?:\s[^<>]*)?/?)>"  # a tag
    r"|[\w#.:\-\])*]\s*\{[^{}]*:[^{}]*;[^{}]*\}"  # a CSS rule
    r"|\bfunction\s*\w*\s*\(|=>|\bdocument\.|\bwindow\.",  # script
    re.IGNORECASE,
)


def web_code_lines(source: str) -> int:
    """Non-blank lines of the string literals in ``source`` (docstrings aside) that hold web code."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return sum(
        sum(1 for line in node.value.splitlines() if line.strip())
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and WEB_CODE.search(node.value)
    )


@pytest.mark.unit
def test_the_web_code_measure_counts_whole_strings_and_skips_docstrings() -> None:
    page = "\n".join(["<section>", *(f"  line {i} of text" for i in range(150)), "</section>"])
    style = ".card { padding: 4px; }\n\n.grid {\n  gap: 8px;\n}"
    script = "(function () {\n  var x = 1;\n})();"
    source = (
        f'"""{page}"""\n'  # a docstring: not counted
        f"PAGE = {page!r}\nSTYLE = {style!r}\nSCRIPT = {script!r}\n"
        f"HELP = 'a folder (default: <home>/feed)'\nPLAIN = 'no markup {{here}}: none'\n"
    )
    assert web_code_lines(source) == 152 + 4 + 3 + 1


@pytest.mark.unit
def test_no_python_file_of_the_packages_holds_pages_in_strings() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    found = {
        str(path.relative_to(ROOT)): web_code_lines(path.read_text(encoding="utf-8"))
        for package in packages["packages"]
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert "serving/dashboard.py" in found  # the measure read the packages
    assert {path: lines for path, lines in found.items() if lines > MAX_WEB_LINES} == {}
