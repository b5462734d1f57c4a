"""Every test carries exactly one kind: what it needs to run, and so when it is worth running.

The kinds are declared with one-line descriptions in pyproject.toml ([tool.pytest.ini_options]
markers); ``pytest -m unit`` runs the fast ones. A module of one kind says so once
(``pytestmark = pytest.mark.unit``); a module that mixes kinds marks each test. A test that
needs a service and trains a model on the way is ``integration``: the service is what it needs.
The hook is imported by ``tests/conftest.py``; it runs before ``-m`` deselects anything, so a
test without a kind stops every run, whichever tests it selects.
"""

from __future__ import annotations

import pytest

KINDS = ("unit", "integration", "model", "e2e", "bench")


def kinds_of(item: pytest.Item) -> list[str]:
    """The kinds among ``item``'s marks (its own, its class's and its module's), in KINDS order."""
    marked = {mark.name for mark in item.iter_markers()}
    return [kind for kind in KINDS if kind in marked]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = [f"{item.nodeid}: {', '.join(kinds_of(item)) or 'no kind'}" for item in items if len(kinds_of(item)) != 1]
    if wrong:
        raise pytest.UsageError(
            f"each test needs exactly one kind of {', '.join(KINDS)} (tests/kinds.py); "
            f"{len(wrong)} test(s) have none or several:\n  " + "\n  ".join(wrong)
        )
