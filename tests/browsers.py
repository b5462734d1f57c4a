"""The browser the dashboard tests drive: Debian's Chromium through Playwright (its own downloads are not used).

Where no browser is found the tests that need one skip on a developer's machine, and FAIL under
CI: a CI job that silently skipped every browser test would report a dashboard it never drew.
CI services set ``CI`` (to ``true``, ``1``, ...); ``.ci/run`` sets it when it is unset.
The fixtures are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

NO_CHROMIUM = "no Chromium: install Debian's chromium package or set TRENDLOOP_CHROMIUM to a browser binary"


def under_ci(environ: Mapping[str, str]) -> bool:
    """``CI`` set to anything but empty, ``0`` or ``false`` (the convention CI services follow)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false")


def find_chromium(environ: Mapping[str, str]) -> str | None:
    """TRENDLOOP_CHROMIUM when set (and only it: a wrong path is not papered over by PATH), else PATH's."""
    search = environ.get("PATH", os.defpath)
    path = environ.get("TRENDLOOP_CHROMIUM") or shutil.which("chromium", path=search)
    path = path or shutil.which("chromium-browser", path=search)
    return path if path and Path(path).is_file() else None


def missing(why: str, environ: Mapping[str, str], tests: str = "browser tests") -> None:
    """Skip the test, or fail it under CI (``tests`` names what may not skip there)."""
    if under_ci(environ):
        pytest.fail(f"{why} (CI is set: {tests} may not skip)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium(os.environ)
    if path is None:
        missing(NO_CHROMIUM, os.environ)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """A headless Chromium for one test module: Playwright's sync API holds an event loop in this thread
    while it runs, so it must not outlive the module (later tests call ``asyncio.run``)."""
    try:
        from playwright import sync_api  # noqa: PLC0415 - only the browser tests need it
    except ImportError:
        missing("no Playwright: `make sync` installs it (a dev dependency)", os.environ)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()
