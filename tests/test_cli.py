"""The command line: every command of the engineers' tour runs, errors are one line with a non-zero exit."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from trendloop.cli import main
from trendloop.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in [k for k in os.environ if k.startswith("TRENDLOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.out, captured.err


def tour_commands() -> list[str]:
    text = (ROOT / "docs" / "engineers.md").read_text()
    block = re.search(r"<!-- tour -->\s*```bash\n(.*?)```\s*<!-- /tour -->", text, re.S)
    assert block, "docs/engineers.md lost its tour block"
    return [line for line in block.group(1).splitlines() if line.startswith("trendloop ")]


def test_the_engineers_tour_runs_as_written(capsys: pytest.CaptureFixture, in_tmp: Path) -> None:
    commands = tour_commands()
    assert len(commands) >= 8
    outputs = {}
    for command in commands:
        code, out, err = run(capsys, *shlex.split(command)[1:])
        assert code == 0, f"{command}\n{out}\n{err}"
        outputs[command] = out
    store = load_settings().store_dir
    snapshots = [p for p in (in_tmp / store / "snapshots").iterdir() if p.is_dir()]
    assert len(snapshots) == 2  # the labelled seed days, then the rest
    assert "content and images match" in outputs["trendloop snapshot verify HEAD"]
    assert "relabelled" in outputs["trendloop snapshot diff HEAD~1 HEAD"]
    # ingest wrote Feast's offline store, materialize filled the online store, train named its features
    assert (
        "features: post batches 1, posts "
        in outputs["trendloop ingest feed --until 2026-01-07 --labels feed/oracle/labels --label-source seed"]
    )
    online = outputs["trendloop features get --user u00031"]
    assert "u00031" in online and "engagement_rate_28d" in online and "None" not in online.splitlines()[1]
    assert "tagger_v1: (no stored features: image only)" in outputs["trendloop features services"]
    assert "version 1 is the champion: the gate compares a candidate with it" in outputs["trendloop evaluate champion"]
    assert "registered trendloop-tagger version 1 as @champion" in outputs["trendloop train --epochs 2"]


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["simulate"],
        ["ingest"],
        ["snapshot"],
        ["snapshot", "list"],
        ["snapshot", "show"],
        ["snapshot", "diff"],
        ["snapshot", "verify"],
        ["config", "show"],
        ["demo"],
        ["serve"],
        ["serve", "up"],
        ["ab"],
        ["ab", "decide"],
        ["features"],
        ["features", "get"],
    ],
)
def test_every_command_has_help(capsys: pytest.CaptureFixture, command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Usage:" in out and "--help" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "no/such/folder"], "error: no such file or folder: no/such/folder"),
        (["snapshot", "show"], "error: there are no snapshots yet; ingest something first"),
        (
            ["simulate", "--trend", "new_class:start_day=1,share=3"],
            "error: trend 'new_class:start_day=1,share=3': share:",
        ),
        (["ingest", ".", "--since", "last tuesday"], "error: --since 'last tuesday' is not a date"),
        (["--config", "missing.toml", "snapshot", "list"], "error: config file missing.toml does not exist"),
        (["ab", "status"], "error: no A/B test is running"),
        (["serve", "config"], "error: there is no champion to serve"),
        (["features", "get"], "error: name at least one --post or --user"),
        (["features", "get", "--user", "u1", "--feature", "posts_7d"], "error: a feature reference is view:feature"),
    ],
)
def test_failures_exit_non_zero_with_one_line(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    code, _, err = run(capsys, *args)
    assert code == 1
    assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1


def test_example_config_lists_the_defaults() -> None:
    example = tomllib.loads((ROOT / "trendloop.example.toml").read_text())
    assert Settings(**example).model_dump() == Settings().model_dump()


def test_services_prepare_names_the_database_new_label_studios_copy(
    capsys: pytest.CaptureFixture, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(in_tmp / "cache"))
    version = Settings().labelstudio.version
    template = in_tmp / "cache" / "trendloop" / f"label-studio-{version}" / "label_studio.sqlite3"
    (in_tmp / "trendloop.toml").write_text('[labelstudio]\nurl = "http://labels.example:8080"\n')
    code, out, _ = run(capsys, "services", "prepare")  # a shared server: nothing is installed or built
    assert code == 0 and "shared server http://labels.example:8080 (not managed here)" in out and not template.exists()
    (in_tmp / "trendloop.toml").unlink()
    code, out, _ = run(capsys, "services", "prepare")
    assert code == 0 and out.startswith(f"label-studio {version}: new state folders start")
    assert template.stat().st_size > 1_000_000  # Label Studio's schema: ~1.4 MB of empty tables


def test_a_fresh_serve_config_needs_no_registry_and_serves_the_champion_alias(
    capsys: pytest.CaptureFixture, in_tmp: Path
) -> None:
    code, out, _ = run(capsys, "serve", "config", "--fresh")
    assert code == 0 and not (in_tmp / ".trendloop").exists()  # nothing was opened or created
    app = json.loads(out)["applications"][0]
    user_configs = {d["name"]: d["user_config"] for d in app["deployments"]}
    assert user_configs["champion"]["version"] == "@champion" and user_configs["challenger"]["version"] is None
    assert user_configs["router"] == {
        "split": 0.0,
        "salt": "trendloop",
        "experiment": None,
        "champion_version": None,
        "challenger_version": None,
    }
    assert app["args"]["models"]["registry"]["tracking_uri"] == f"sqlite:///{in_tmp / '.trendloop' / 'mlflow.db'}"
