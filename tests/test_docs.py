"""The documents stay true to the code: what they cite exists, their commands parse, the runnable ones run.

Every ``bash`` block of the README and ``docs/`` is read line by line: a ``trendloop`` command
must parse against the real command line (the command exists, its options and arguments fit),
a ``make`` target must exist, a script must be there. Blocks marked ``<!-- runs -->`` run, in a
fresh folder; the engineers' tour (``<!-- tour -->``) runs in ``tests/test_cli.py``.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
from pathlib import Path

import pytest
import typer.exceptions
from typer.main import get_command

from trendloop.cli import app, main

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


# -- command blocks ------------------------------------------------------------------------------------------------

BLOCK = re.compile(r"(<!-- (?:runs|tour) -->\s*)?```bash\n(.*?)```", re.S)
OTHER_PROGRAMS = {  # commands the documents show that need what the suite does not start
    "curl": "a running serving app (tests/test_serving.py drives the same endpoints)",
    "docker": "a container engine and registry (the cluster path)",
    "git": "a remote to pull from",
    "kubectl": "a Kubernetes cluster (tests/test_k8s.py builds and validates the manifests offline)",
    "source": "the reader's shell",
    "tar": "a home worth backing up",
}


def command_lines(block: str) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuations joined, comments, heredoc bodies and
    leading ``VAR=value`` assignments dropped, ``a && b`` split."""
    lines, joined, heredoc = [], "", None
    for raw in block.splitlines():
        if heredoc is not None:
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        joined += raw.rstrip("\\").strip() + " "
        if raw.rstrip().endswith("\\"):
            continue
        words = shlex.split(joined, comments=True)
        joined = ""
        if "<<" in " ".join(words):
            heredoc = re.search(r"<<\s*'?(\w+)'?", " ".join(words)).group(1)  # type: ignore[union-attr]
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                    command.pop(0)
                if command:
                    lines.append(command)
                command = []
            else:
                command.append(word)
    return lines


def blocks() -> list[tuple[str, bool, str]]:
    """(document, runs, block) for every bash block of the documents."""
    return [(doc.name, bool(mark), body) for doc in DOCUMENTS for mark, body in BLOCK.findall(doc.read_text())]


def parse_cli(argv: list[str]) -> str:
    """Parse ``trendloop argv`` as the real command line would, running nothing; the command's path."""
    command = get_command(app)
    try:
        ctx = command.make_context("trendloop", list(argv))
        while hasattr(command, "resolve_command"):
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                break
            name, command, rest = command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx)
    except typer.exceptions.Exit as done:  # --help
        assert done.exit_code == 0
        return "help"
    return ctx.command_path


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_the_block_reader_splits_what_a_shell_would():
    block = """TRENDLOOP_HOME=/d trendloop ingest /x   # a comment
docker build . && docker push r/t:1
cat > c.toml <<'TOML'
home = "/data"
TOML
trendloop --config c.toml pipeline run label_sync \\
    --param since=2026-01-19
"""
    assert command_lines(block) == [
        ["trendloop", "ingest", "/x"],
        ["docker", "build", "."],
        ["docker", "push", "r/t:1"],
        ["cat", ">", "c.toml", "<<TOML"],
        ["trendloop", "--config", "c.toml", "pipeline", "run", "label_sync", "--param", "since=2026-01-19"],
    ]
    assert parse_cli(["ab", "split", "0.2"]) == "trendloop ab split"
    with pytest.raises(typer.exceptions.TyperException, match="No such command 'spilt'"):
        parse_cli(["ab", "spilt"])
    with pytest.raises(typer.exceptions.TyperException, match="No such option: --nope"):
        parse_cli(["train", "--nope"])


def test_every_command_in_the_documents_parses_and_names_what_exists():
    checked, problems = 0, []
    for doc, _, block in blocks():
        for argv in command_lines(block):
            program, args = argv[0], argv[1:]
            if program == "uv" and args[:1] == ["run"]:
                program, args = args[1], args[2:]
            checked += 1
            if program == "trendloop":
                try:
                    parse_cli(args)
                except typer.exceptions.TyperException as err:
                    problems.append(f"{doc}: {shlex.join(argv)}: {err}")
            elif program == "make":
                targets = [t for t in args if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", t)]  # MINUTES=30: a variable
                problems += [f"{doc}: no make target {t}" for t in targets if t not in makefile_targets()]
            elif program == "python":
                problems += [] if (ROOT / args[0]).is_file() else [f"{doc}: no script {args[0]}"]
            elif program == "cat":
                pass  # a heredoc that writes the config the next commands read
            elif program not in OTHER_PROGRAMS:
                problems.append(f"{doc}: {program}: a command the suite does not know how to check")
    assert checked >= 60
    assert problems == []


def test_the_runnable_blocks_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture):
    for key in [k for k in os.environ if k.startswith("TRENDLOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    runnable = [(doc, argv) for doc, runs, block in blocks() if runs for argv in command_lines(block)]
    assert {doc for doc, _ in runnable} >= {"annotators.md", "operations.md", "engineers.md"}
    for doc, argv in runnable:
        if doc == "engineers.md":
            continue  # the tour: tests/test_cli.py runs it and checks what it made
        with pytest.raises(SystemExit) as exit_:
            main(argv[1:])
        out = capsys.readouterr()
        assert (exit_.value.code or 0) == 0, f"{doc}: {shlex.join(argv)}\n{out.out}\n{out.err}"
        assert "stopped" in out.out  # nothing runs in a fresh folder, and each says so


def test_every_picture_in_the_documents_exists_and_a_test_takes_it():
    pictures = {m for doc in DOCUMENTS for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc.read_text())}
    assert pictures >= {"images/dashboard.png", "images/labelstudio-task.png"}
    assert sorted(p for p in pictures if not (ROOT / "docs" / p).is_file()) == []
    recipe = (ROOT / "Makefile").read_text().split("docs-images:", 1)[1].split("\n\n", 1)[0]
    assert sorted(p for p in pictures if f"docs/{p}" not in recipe) == []
