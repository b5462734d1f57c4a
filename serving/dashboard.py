"""The A/B dashboard: one HTML page, champion vs challenger, for product people.

The page, its stylesheet and its script are package data in ``serving/static/``
(``dashboard.html``, ``dashboard.css``, ``dashboard.js``), read through importlib.resources so
they ship in the wheel and the image like the code. This module fills the page in: the report
(when given), where to fetch it from, and the Content-Security-Policy. The page needs nothing
from the network; the charts are SVG drawn by the script.

It is handed out two ways, neither needing ``'unsafe-inline'``:

- served (``GET /ab``, see serving.api): the page links its stylesheet and script on the app
  itself (``links``), and the policy allows style and script from ``'self'`` only
  (``page_headers`` sends it as a header, with ``frame-ancestors`` and ``nosniff``);
- self-contained (``trendloop ab report --html``: a file opened with no server behind it): the
  stylesheet and script are inlined, and the policy allows exactly those two by SHA-256 hash.

Plain words first, numbers second: the verdict and its reasons on top, then the arms, the lift with
its always-valid interval (the one the verdict uses) and the fixed-horizon interval, the SRM check,
the guardrails, two charts over time and the decision rule as declared before the test started.

Safety: the report holds strings that users control (experiment ids, reasons, guardrail names), so

- the report is embedded as JSON in a ``<script type="application/json">`` data block with ``<``,
  ``>``, ``&``, U+2028 and U+2029 written as ``\\uXXXX`` escapes: no ``</script>`` or ``<!--`` can
  appear inside it (the OWASP rule for JSON in HTML);
- the script writes every value with ``textContent`` / ``createElementNS``, never ``innerHTML``;
- the Content-Security-Policy allows only this page's own script and style, so even an injected
  ``<script>`` would not run.

Conventions read from the report: ``experiment.split``, ``srm.expected_share`` and
``srm.observed_share`` are the challenger's share of users; ``lift`` bounds are on the relative
lift (0.04 = +4%). Any field may be null or missing; the page shows a dash for what it lacks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")  # host[:port], no userinfo

# The files the app hands out beside the page, and their types (text/javascript: RFC 9239)
ASSET_TYPES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}


@dataclass(frozen=True)
class Links:
    """Where a served page loads its stylesheet and script from: paths on the app (or URLs)."""

    style: str
    script: str


@functools.cache
def asset(name: str) -> str:
    """The text of one of the dashboard's files in ``serving/static/`` (read once per process)."""
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


def render_dashboard(
    report: dict | None = None,
    report_url: str | None = "/ab/report.json",
    refresh_s: int = 30,
    links: Links | None = None,
) -> str:
    """The dashboard as a complete HTML document.

    report: embedded and rendered at load when given.
    report_url: fetched at load when no report is embedded, then every ``refresh_s`` seconds
        (``refresh_s=0``: never again); a failed fetch shows an error banner and keeps the last
        good data on screen. None: the page never fetches.
    links: where the stylesheet and script are served; None: both inline (a self-contained page).
    """
    if refresh_s < 0:
        raise ValueError(f"refresh_s must be >= 0, got {refresh_s}")
    config = {"report_url": report_url, "refresh_s": refresh_s}
    if links is None:
        style, script = f"<style>{asset('dashboard.css')}</style>", f"<script>{asset('dashboard.js')}</script>"
    else:
        style = f'<link rel="stylesheet" href="{escape(links.style, quote=True)}">'
        script = f'<script src="{escape(links.script, quote=True)}"></script>'
    parts = {
        "csp": escape(content_security_policy(report_url, links), quote=True),
        "style": style,
        "config": _script_json(config),
        "report": "" if report is None else _script_json(report),
        "script": script,
    }
    # one pass: data is never re-scanned for placeholders
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], asset("dashboard.html"))


def page_headers(report_url: str | None, links: Links) -> dict[str, str]:
    """The headers of the served page: its policy (frame-ancestors too, which a meta tag cannot carry:
    nothing may frame the dashboard), and no guessing of content types."""
    return {
        "Content-Security-Policy": content_security_policy(report_url, links) + "; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    }


def content_security_policy(report_url: str | None, links: Links | None = None) -> str:
    """Only our own script and style run (linked from this origin, or inline by hash); fetches go to this
    origin or the report's. Everything else is refused (``default-src 'none'``)."""
    if links is None:
        script, style = f"'{_sha256(asset('dashboard.js'))}'", f"'{_sha256(asset('dashboard.css'))}'"
    else:
        script, style = _sources(links.script), _sources(links.style)
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {script}",
            f"style-src {style}",
            "img-src data:",  # the empty favicon
            f"connect-src {_sources(report_url)}",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def _sources(url: str | None) -> str:
    """'self', plus the origin of ``url`` when it names a well-formed http(s) one."""
    found = ["'self'"]
    if url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and _HOST.fullmatch(parts.netloc):
            found.append(f"{parts.scheme}://{parts.netloc}")
    return " ".join(found)


def _script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` data block and still parses to the same value."""
    text = json.dumps(_plain(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, code in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, code)
    return text


def _plain(value: Any) -> Any:
    """JSON types only: NaN and infinities become null (JSON has neither), numpy scalars Python ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if hasattr(value, "isoformat"):  # datetime, date, pandas Timestamp
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    if hasattr(value, "tolist"):  # numpy array
        return _plain(value.tolist())
    return str(value)


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
