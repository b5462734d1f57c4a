"""The documents stay true to the code: every path and dotted name they cite exists, and the layout lists every module.

(The README's command blocks run in ``tests/test_cli.py``.)
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TOP = ("components", "active_learning", "serving", "pipelines", "feature_repo", "infra", "trendloop")
CODE = re.compile(r"`([^`\s]+)`")
PATH = re.compile(rf"^(?:{'|'.join(TOP)}|tests|benchmarks|docs)/[\w./-]*$")
DOTTED = re.compile(rf"^(?:{'|'.join(TOP)})\.[\w.]+$")
CITED_DOC = re.compile(r"\bdocs/[\w-]+\.md\b")


def cited(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(document, token) for every code span of the documents that ``pattern`` matches."""
    return [
        (doc.name, token)
        for doc in DOCUMENTS
        for token in CODE.findall(doc.read_text())
        if pattern.match(token.split("(")[0])
    ]


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module, or an attribute reached from the longest importable module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_the_documents_exist_and_cite_code():
    assert {doc.name for doc in DOCUMENTS} >= {"README.md", "architecture.md"}
    assert len(cited(PATH)) >= 10 and len(cited(DOTTED)) >= 10


@pytest.mark.parametrize("token", sorted({t for _, t in cited(PATH)}))
def test_a_cited_path_exists(token):
    assert (ROOT / token.rstrip("/")).exists()


def is_setting(dotted: str) -> bool:
    """Whether ``dotted`` is a settings key (``serving.port``): sections share names with packages."""
    from trendloop.settings import Settings  # noqa: PLC0415 - only where a token is not code

    model: type | None = Settings
    for name in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or name not in fields:
            return False
        model = fields[name].annotation
    return True


@pytest.mark.parametrize("token", sorted({t.split("(")[0] for _, t in cited(DOTTED)}))
def test_a_cited_name_resolves(token):
    assert resolves(token) or is_setting(token) or (ROOT / token).is_file()


def test_a_name_that_moved_does_not_resolve():
    """The check above can fail: a module path from before the stages does not resolve."""
    assert not resolves("components.workflow.retrain")
    assert not resolves("components.model.retrain.no_such_function")
    assert resolves("components.model.retrain.retrain")
    assert is_setting("serving.port") and not is_setting("serving.no_such_key")


def test_every_document_the_code_cites_exists():
    sources = [p for top in TOP for p in (ROOT / top).rglob("*.py")]
    cited_docs = {m for p in sources for m in CITED_DOC.findall(p.read_text())}
    assert "docs/architecture.md" in cited_docs
    assert sorted(d for d in cited_docs if not (ROOT / d).exists()) == []


def test_the_architecture_lists_every_module_of_every_stage():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(CODE.findall(text))
    stages = [p for p in sorted((ROOT / "components").iterdir()) if (p / "__init__.py").exists()]
    assert [f"{stage.name}/" for stage in stages if f"{stage.name}/" not in named] == []
    missing = [
        f"{stage.name}/{module.stem}"
        for stage in stages
        if stage.name != "simulator"  # the feed's renderers are one subject, named as a whole
        for module in stage.glob("*.py")
        if module.stem != "__init__" and module.stem not in named
    ]
    assert missing == []
