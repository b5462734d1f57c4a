"""Every test carries exactly one kind, or the run stops at collection (tests/kinds.py)."""

from __future__ import annotations

import pytest

from tests.kinds import KINDS

pytestmark = pytest.mark.unit
pytest_plugins = ("pytester",)

INI = "[pytest]\nmarkers =\n" + "".join(f"    {kind}: a kind\n" for kind in KINDS)


def collect(pytester: pytest.Pytester, tests: str, *args: str) -> pytest.RunResult:
    """``tests`` as a module of its own, collected under the real hook (in a pytest of its own)."""
    pytester.makeini(INI)
    pytester.makeconftest("from tests.kinds import pytest_collection_modifyitems  # noqa: F401\n")
    pytester.makepyfile(test_some=tests)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_the_kinds_are_the_ones_pyproject_declares(pytestconfig: pytest.Config) -> None:
    declared = [line.split(":")[0] for line in pytestconfig.getini("markers")]
    assert [kind for kind in declared if kind in KINDS] == list(KINDS)


def test_one_kind_each_by_module_or_by_test_runs(pytester: pytest.Pytester) -> None:
    result = collect(
        pytester,
        "import pytest\n"
        "pytestmark = pytest.mark.unit\n"
        "def test_a():\n    assert 1 + 1 == 2\n"
        "@pytest.mark.parametrize('n', [1, 2])\ndef test_b(n):\n    assert n > 0\n",
    )
    result.assert_outcomes(passed=3)


def test_a_test_without_a_kind_or_with_two_stops_the_run_and_is_named(pytester: pytest.Pytester) -> None:
    result = collect(
        pytester,
        "import pytest\n"
        "@pytest.mark.unit\ndef test_fine():\n    pass\n"
        "def test_bare():\n    pass\n"
        "@pytest.mark.unit\n@pytest.mark.model\ndef test_both():\n    pass\n",
        "-m",
        "unit and not model",  # selecting around them does not hide them: the check runs before -m
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*each test needs exactly one kind of unit, integration, model, e2e, bench*2 test(s) have none or several:",
            "*test_some.py::test_bare: no kind",
            "*test_some.py::test_both: unit, model",
        ]
    )
    assert "test_fine" not in result.stderr.str()
