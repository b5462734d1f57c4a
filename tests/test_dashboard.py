"""The A/B dashboard in a real headless browser (the system's Chromium through Playwright; see tests/browsers.py
for when a missing one skips or fails). Tests that need no browser run without one.

Every browser test also asserts that the page raised no JavaScript error and logged no console error.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from components.predlog import PredictionLog
from serving.api import build_api
from serving.dashboard import render_dashboard
from serving.eventlog import EventWriter, FeedbackLog
from serving.router import RequestBook, Router

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
MINUS = "\u2212"
DASH = "\u2014"
BUCKETS = 24
HOSTILE_SCRIPT = "</script><script>window.pwned=1</script>"
HOSTILE_IMG = '<img src=x onerror="window.pwned=2">'
MAX_WEB_LINES = 100  # lines of HTML/CSS/JS a Python file of the packages may hold in string literals


def timeline(buckets: int = BUCKETS, arms: tuple[str, ...] = ("champion", "challenger")) -> list[dict]:
    """Hourly buckets; the challenger engages a little more. Deterministic, so charts are comparable."""
    start = datetime(2025, 3, 12, 9, tzinfo=UTC)
    rows = []
    for i in range(buckets):
        for arm in arms:
            exposures = 900 + 40 * (i % 7) + (30 if arm == "challenger" else 0) + 15 * i
            rate = 0.040 + 0.002 * ((i * 5) % 4) + (0.003 if arm == "challenger" else 0.0)
            rows.append(
                {
                    "start": (start + timedelta(hours=i)).isoformat(),
                    "arm": arm,
                    "users": exposures // 12,
                    "exposures": exposures,
                    "engagements": round(exposures * rate),
                    "reports": i % 3,
                }
            )
    return rows


def arm(users: int, exposures: int, engagement_rate: float, report_rate: float, p50: float, p95: float) -> dict:
    return {
        "users": users,
        "exposures": exposures,
        "engagements": round(exposures * engagement_rate),
        "reports": round(exposures * report_rate),
        "engagement_rate": engagement_rate,
        "report_rate": report_rate,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p95 * 1.6,
    }


def make_report() -> dict:
    return {
        "experiment": {
            "id": "exp-2025-03-12-feed-v4",
            "started_at": "2025-03-12T09:00:00+00:00",
            "champion_version": 3,
            "challenger_version": 4,
            "split": 0.5,
        },
        "generated_at": "2025-03-13T09:05:00.123456",  # naive, as some writers leave it: read as UTC
        "arms": {
            "champion": arm(12345, 148210, 0.041, 0.0021, 41.7, 118.2),
            "challenger": arm(12290, 147655, 0.0435, 0.0019, 44.9, 131.0),
        },
        "lift": {
            "absolute": 0.0025,
            "relative": 0.061,
            "ci_low": 0.024,
            "ci_high": 0.098,
            "ci_method": "delta method",
            "p_value": 0.0004,
            "cs_low": 0.012,
            "cs_high": 0.11,
            "always_valid_p": 0.013,
            "confidence": 0.95,
            "cuped": True,
            "variance_reduction": 0.234,
        },
        "srm": {"p_value": 0.62, "expected_share": 0.5, "observed_share": 0.4989, "ok": True},
        "guardrails": [
            {
                "name": "latency_p95",
                "ok": False,
                "value": 0.108,
                "limit": 0.1,
                "detail": "p95 latency 131 ms vs 118 ms",
            },
            {"name": "report_rate", "ok": True, "value": -0.0002, "limit": 0.001, "detail": None},
        ],
        "decision": {
            "verdict": "promote",
            "headline": "Promote version 4: people engage 6% more with it, and it is sure enough to act on.",
            "reasons": [
                "The always-valid interval for the lift (+1.2% to +11.0%) lies above the +1.0% minimum.",
                "Both arms have more than 1,000 users.",
            ],
        },
        "rule": {
            "alpha": 0.05,
            "min_users_per_arm": 1000,
            "min_lift": 0.01,
            "srm_alpha": 0.001,
            "max_latency_increase": 0.1,
            "max_report_rate_increase": 0.001,
            "sequential": "mSPRT",
        },
        "timeline": timeline(),
    }


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


def test_embedded_report_renders_its_values(tab: Tab) -> None:
    report = make_report()
    tab.show(render_dashboard(report, report_url=None))
    page = tab.page

    assert tab.text("#headline") == report["decision"]["headline"]
    assert page.get_attribute("#verdict", "data-verdict") == "promote"
    assert "tone-good" in page.get_attribute("#verdict", "class")
    assert tab.text("#verdict-label").lower() == "promote the challenger"
    assert page.locator("#reasons li").all_inner_texts() == report["decision"]["reasons"]

    assert tab.text("#champion-version") == "v3"
    assert tab.text("#challenger-version") == "v4"
    assert tab.text("#experiment-id") == "exp-2025-03-12-feed-v4"
    assert tab.text("#started-at") == "12 Mar 2025, 09:00 UTC"
    assert tab.text("#generated-at") == "13 Mar 2025, 09:05 UTC"
    assert tab.text("#split") == "50% champion / 50% challenger"
    assert tab.page.locator("#ended").is_hidden()

    def cell(arm: str, metric: str) -> str:
        return tab.text(f"#arms td[data-arm='{arm}'][data-metric='{metric}']")

    assert page.locator("#arms th[data-arm]").all_inner_texts() == ["Champion v3", "Challenger v4"]
    assert cell("champion", "users") == "12,345"
    assert cell("challenger", "exposures") == "147,655"
    assert cell("champion", "engagement_rate") == "4.10%"
    assert cell("challenger", "engagement_rate") == "4.35%"
    assert cell("difference", "engagement_rate") == "+0.25 pp"
    assert cell("champion", "report_rate") == "0.21%"
    assert cell("difference", "report_rate") == f"{MINUS}0.02 pp"
    assert cell("champion", "latency_p50_ms") == "42 ms"
    assert cell("challenger", "latency_p95_ms") == "131 ms"
    assert cell("difference", "latency_p95_ms") == "+13 ms (+10.8%)"

    assert tab.text("#lift-relative") == "+6.1%"
    assert tab.text("#lift-absolute") == "+0.25 pp in engagement rate"
    assert tab.text("#lift-cs") == "+1.2% to +11.0%"
    assert tab.text("#lift-ci") == "+2.4% to +9.8%"
    assert tab.text("#lift-cs-label") == "Always-valid 95% interval (used for the verdict)"
    assert tab.text("#lift-ci-label") == "Fixed-horizon 95% interval (delta method)"
    assert tab.text("#lift-p") == "< 0.001"
    assert tab.text("#lift-avp") == "0.013"
    assert tab.text("#lift-cuped") == "yes, 23.4% less variance"
    # the interval plot: the always-valid bar spans its bounds, the zero line sits between them
    bar = page.locator("#lift-plot line.interval.cs")
    assert (float(bar.get_attribute("data-low")), float(bar.get_attribute("data-high"))) == (0.012, 0.11)
    zero_x = float(page.get_attribute("#lift-plot line.zero-line", "x1"))
    assert zero_x < float(bar.get_attribute("x1")) < float(bar.get_attribute("x2"))

    assert page.get_attribute("#srm", "data-ok") == "true"
    assert tab.text("#srm-status") == "OK"
    assert tab.text("#srm-observed") == "49.9%"
    assert page.locator("#srm-warning").is_hidden()

    breached = page.locator("#guardrails tr[data-name='latency_p95']")
    assert breached.get_attribute("data-ok") == "false"
    assert breached.locator("td.status").inner_text().strip() == "Breached"
    assert breached.locator("td.value").inner_text().strip() == "+10.8%"
    assert breached.locator("td.limit").inner_text().strip() == "10.0%"
    held = page.locator("#guardrails tr[data-name='report_rate']")
    assert (held.get_attribute("data-ok"), held.locator("td.status").inner_text().strip()) == ("true", "OK")
    assert held.locator("td.value").inner_text().strip() == f"{MINUS}0.02%"
    assert held.locator("td.limit").inner_text().strip() == "0.10%"
    assert tab.text("#guardrails-summary") == "1 of 2 guardrails breached."

    for chart in ("#chart-exposures", "#chart-engagement"):
        paths = page.locator(f"{chart} path.series")
        assert [paths.nth(i).get_attribute("data-arm") for i in range(paths.count())] == ["champion", "challenger"]
        for i in range(2):
            points = path_points(paths.nth(i).get_attribute("d"))
            assert len(points) == BUCKETS
            assert [p[0] for p in points] == sorted(p[0] for p in points)  # left to right in time
        assert "per 1-hour bucket" in page.locator(chart).text_content()
        assert "not cumulative" in page.locator(chart).text_content()
        assert "Champion v3" in page.locator(chart).text_content()
    # higher is up: the bucket with the most challenger exposures is drawn highest
    rows = [r for r in report["timeline"] if r["arm"] == "challenger"]
    ys = [y for _, y in path_points(page.get_attribute("#chart-exposures path[data-arm='challenger']", "d"))]
    assert ys.index(min(ys)) == max(range(BUCKETS), key=lambda i: rows[i]["exposures"])

    assert tab.text("#rule dd[data-key='min_users_per_arm']") == "1,000"
    assert tab.text("#rule dd[data-key='min_lift']") == "+1.0%"
    assert tab.text("#rule dd[data-key='alpha']") == "0.05"
    assert tab.text("#rule dd[data-key='max_latency_increase']") == "10.0%"
    assert tab.text("#rule dd[data-key='sequential']") == "mSPRT"  # keys the page does not know render too
    assert page.locator("#error").is_hidden()
    assert tab.errors == []


def test_failed_srm_warns_that_no_verdict_can_be_trusted(tab: Tab) -> None:
    report = make_report()
    report["srm"] = {"p_value": 0.00002, "expected_share": 0.5, "observed_share": 0.462, "ok": False}
    report["decision"]["verdict"] = "blocked"
    report["experiment"] |= {"ended_at": "2025-03-13T10:00:00+00:00", "outcome": "stopped"}
    tab.show(render_dashboard(report, report_url=None))

    warning = tab.page.locator("#srm-warning")
    assert warning.is_visible()
    assert "do not trust any verdict" in warning.inner_text()
    assert "observed 46.2%" in warning.inner_text()
    assert tab.page.get_attribute("#srm", "data-ok") == "false"
    assert tab.text("#srm-status") == "Failed"
    assert tab.text("#srm-p") == "< 0.001"
    assert tab.page.get_attribute("#verdict", "data-verdict") == "blocked"
    assert tab.text("#ended") == "Ended 13 Mar 2025, 10:00 UTC (stopped)"
    assert tab.errors == []


class ReportServer:
    """Serves the dashboard at / and a report at /ab/report.json; the report's status can be changed."""

    def __init__(self, page: str):
        self.page, self.report, self.status = page.encode(), b"{}", 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/":
                    self.reply(200, "text/html; charset=utf-8", owner.page)
                elif self.path == "/ab/report.json":
                    body = owner.report if owner.status == 200 else b'{"error": "boom"}'
                    self.reply(owner.status, "application/json", body)
                else:
                    self.reply(404, "text/plain", b"not found")

            def reply(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def set_report(self, report: dict, status: int = 200) -> None:
        self.report, self.status = json.dumps(report).encode(), status

    def __enter__(self) -> ReportServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_fetched_report_renders_and_a_failed_refresh_keeps_the_last_data(tab: Tab) -> None:
    report = make_report()
    with ReportServer(render_dashboard(None, report_url="/ab/report.json", refresh_s=1)) as server:
        server.set_report(report)
        tab.page.goto(server.url)
        tab.page.wait_for_selector("body:not([data-renders='0'])", timeout=5000)
        assert tab.text("#headline") == report["decision"]["headline"]
        assert tab.text("#arms td[data-arm='challenger'][data-metric='engagement_rate']") == "4.35%"
        assert tab.page.locator("#error").is_hidden()

        server.status = 500
        tab.page.wait_for_selector("#error", state="visible", timeout=5000)
        banner = tab.text("#error")
        assert "Could not update the report" in banner
        assert "HTTP 500" in banner
        assert "Showing the last good data" in banner
        assert tab.text("#headline") == report["decision"]["headline"]  # the last good data stays
        assert tab.text("#lift-cs") == "+1.2% to +11.0%"

        # the next good answer replaces the data and clears the banner
        report["decision"]["headline"] = "Keep going: not sure yet."
        report["decision"]["verdict"] = "continue"
        server.set_report(report)
        tab.page.wait_for_selector("#error", state="hidden", timeout=5000)
        assert tab.text("#headline") == "Keep going: not sure yet."
        assert tab.page.get_attribute("#verdict", "data-verdict") == "continue"

    # the browser logs each 500 it got as a failed resource; nothing else may be logged
    failed = [e for e in tab.errors if "status of 500" in e]
    assert failed
    assert [e for e in tab.errors if e not in failed] == []
    tab.errors.clear()


def test_hostile_strings_render_as_text_and_run_nothing(tab: Tab) -> None:
    report = make_report()
    report["experiment"]["id"] = "exp-<svg onload=window.pwned=3>"
    report["decision"]["headline"] = HOSTILE_IMG
    report["decision"]["reasons"] = [HOSTILE_SCRIPT, "<!-- <script>window.pwned=4</script>", "a\u2028b"]
    report["guardrails"][0]["name"] = HOSTILE_SCRIPT
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


def no_challenger_yet() -> dict:
    report = make_report()
    report["experiment"]["challenger_version"] = None
    report["arms"]["challenger"] = None
    report["lift"] = None
    report["srm"] = None
    report["guardrails"] = None
    report["rule"] = None
    report["decision"] = {"verdict": "insufficient", "headline": None, "reasons": None}
    report["timeline"] = timeline(arms=("champion",))
    report["arms"]["champion"]["latency_p99_ms"] = float("nan")  # NaN from numpy code becomes null
    return report


@pytest.mark.parametrize(
    "report",
    [
        {},
        nulls_everywhere(make_report()),
        no_challenger_yet(),
        {"arms": [], "timeline": {}, "rule": 3},
        {  # what the serving app answers while no test runs
            "experiment": {"id": None, "champion_version": 3, "challenger_version": None},
            "decision": {"verdict": "none", "headline": "No A/B test is running.", "reasons": []},
        },
    ],
    ids=["empty", "all-null", "no-challenger", "wrong-types", "no-experiment"],
)
def test_a_report_full_of_nulls_renders_without_errors(tab: Tab, report: dict) -> None:
    tab.show(render_dashboard(report, report_url=None))
    assert tab.errors == []
    assert tab.text("#arms td[data-arm='challenger'][data-metric='engagement_rate']") == DASH
    assert tab.text("#srm-status") == "Not checked"
    assert tab.page.locator("#srm-warning").is_hidden()
    assert tab.page.locator("#error").is_hidden()
    assert tab.text("#challenger-version") == DASH
    assert tab.text("#lift-cs") == DASH


def test_no_challenger_yet_shows_the_champion_alone(tab: Tab) -> None:
    tab.show(render_dashboard(no_challenger_yet(), report_url=None))
    assert tab.text("#verdict-label") == "NOT ENOUGH DATA YET"  # shown in capitals by CSS
    assert tab.text("#headline") == "Not enough data yet."
    assert tab.text("#arms td[data-arm='champion'][data-metric='engagement_rate']") == "4.10%"
    assert tab.text("#arms td[data-arm='champion'][data-metric='latency_p99_ms']") == DASH
    for chart in ("#chart-exposures", "#chart-engagement"):
        paths = tab.page.locator(f"{chart} path.series")
        assert paths.count() == 1
        assert len(path_points(paths.first.get_attribute("d"))) == BUCKETS
    assert tab.page.locator("#lift-plot").text_content() == "No lift estimate yet"
    assert tab.errors == []


def test_render_dashboard_rejects_a_negative_refresh() -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        render_dashboard(make_report(), refresh_s=-1)


def test_screenshot_of_the_dashboard(tab: Tab) -> None:
    """Saved for people to look at (test-artifacts/ is git-ignored); it must show a real, many-coloured page."""
    ARTIFACTS.mkdir(exist_ok=True)
    report = make_report()
    tab.show(render_dashboard(report, report_url=None))
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


def test_render_dashboard_leaves_the_report_unchanged() -> None:
    report = make_report()
    before = copy.deepcopy(report)
    render_dashboard(report)
    assert report == before


def test_the_page_may_fetch_only_from_its_own_origin_and_the_reports() -> None:
    def connect_src(html: str) -> str:
        csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))
        return next(d for d in csp.split("; ") if d.startswith("connect-src"))

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


# --- no browser needed ----------------------------------------------------------------------------------


def dashboard_api(tmp_path: Path, answer: Callable[[], dict]) -> tuple[FastAPI, Router]:
    """The serving app's FastAPI (no Ray, no model); its /ab/report.json answers ``answer()`` each time."""
    predictions = PredictionLog(tmp_path / "predictions")
    writers = EventWriter(predictions, "dash"), EventWriter(FeedbackLog(tmp_path / "feedback"), "dash")
    router = Router({}, *writers, RequestBook(predictions))
    return build_api(router, {}, answer, report_ttl_s=0.0), router


def static(name: str) -> str:
    return (resources.files("serving") / "static" / name).read_text(encoding="utf-8")


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def meta_policy(html: str) -> str:
    return unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))


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
        "refresh_s": 30,
    }

    assert files["dashboard.css"].headers["content-type"] == "text/css; charset=utf-8"
    assert files["dashboard.js"].headers["content-type"] == "text/javascript; charset=utf-8"
    for name, response in files.items():
        assert response.status_code == 200
        assert response.text == static(name)  # the package's file, as installed
        assert response.headers["x-content-type-options"] == "nosniff"
    assert absent == [404, 404, 404]  # only the two files, nothing else of the package


def test_the_self_contained_page_inlines_its_files_allowed_by_their_hashes() -> None:
    html = render_dashboard(None, report_url=None)
    assert f"<style>{static('dashboard.css')}</style>" in html
    assert f"<script>{static('dashboard.js')}</script>" in html
    policy = meta_policy(html)
    assert f"script-src {sha256(static('dashboard.js'))};" in policy
    assert f"style-src {sha256(static('dashboard.css'))};" in policy
    assert "unsafe" not in policy and "'self'" not in policy.split("connect-src")[0]


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


def test_no_python_file_of_the_packages_holds_pages_in_strings() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    found = {
        str(path.relative_to(ROOT)): web_code_lines(path.read_text(encoding="utf-8"))
        for package in packages["packages"]
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert "serving/dashboard.py" in found  # the measure read the packages
    assert {path: lines for path, lines in found.items() if lines > MAX_WEB_LINES} == {}
