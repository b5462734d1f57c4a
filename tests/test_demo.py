"""The main job end to end at a reduced size: the loop closes and a challenger is promoted after a new trend.

Everything real: kfp.local pipelines, MLflow, the session's Label Studio, a local Ray with
the serving app, simulated viewers over HTTP. A smaller world than `make demo` (fewer
days and posts, a trend that starts sooner and grows faster), with a fixed seed.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pandas as pd
import pytest
from personal import find, find_in_text

from components.data.predlog import PredictionLog
from components.data.snapshot import Store
from components.errors import LabelingError
from components.model.registry import CHAMPION, Registry
from infra.labelstudio import LocalLabelStudio
from infra.ray import RayError
from serving.traffic import Audience
from tests.conftest import free_port
from trendloop import wiring
from trendloop.cli import main
from trendloop.demo import DemoSize, _logging_to, job_settings, run_demo
from trendloop.settings import load_settings

# 200 labels, as the gate's margins below were set for (the main job buys 300)
SIZE = DemoSize(
    days=7, seed_days=5, posts_per_day=200, views_per_post=2, viewers=1200, ab_chunk=1500, ab_requests=6000, labels=200
)
CONFIG = """
home = "{home}"
[simulate]
seed = 5
posts_per_day = 200
[[simulate.trends]]  # a meme format goes viral on day 5, the first after the labelled history: 30% of posts
kind = "new_class"
name = "meme"
look = "meme"
start_day = 5
ramp_days = 0
share = 0.3
[features]
on_ingest = false  # the image-only tagger reads no features; tests/test_features.py covers the store
[gate]  # five labelled days leave 167 old-class test posts: a 95% bound there cannot show 5 points of
# non-inferiority (the challenger's crop stability measured 0.904 vs 0.928, lower bound -0.064), so 10 points
stability_margin = 0.1
[ab]
min_users_per_arm = 300  # 1,200 viewers split in two
tau = 0.3  # as the main job's (an [ab] section of one's own replaces its rule): DemoSize.expected_lift
max_latency_increase = 0.5  # and DemoSize.max_latency_increase: the arms differ by noise alone on 2 cores
[labelstudio]
url = "{ls_url}"
token = "{ls_token}"
project = "main job test"
image_url = "/data/local-files/?d={ls_dir}/.trendloop/store/{{image}}"
[serving]
port = {port}
ray_cpus = 2
flush_every_s = 0.5
[serving.ray_ports]
gcs = {gcs}
dashboard = {dashboard}
agent = {agent}
client = {client}
"""


@pytest.fixture(scope="module")
def finished(label_studio: LocalLabelStudio):
    home = label_studio.document_root / "main-job"
    home.mkdir()
    config = home / "trendloop.toml"
    ports = {k: free_port() for k in ("port", "gcs", "dashboard", "agent", "client")}
    token = label_studio.credentials().token
    values = {"home": home / ".trendloop", "ls_url": label_studio.url, "ls_token": token, "ls_dir": home.name}
    config.write_text(CONFIG.format(**values, **ports))
    settings = load_settings(config)
    try:
        yield settings, run_demo(settings, SIZE), config
    finally:
        wiring.serve_admin(settings).shutdown() if wiring.serve_admin(settings).reachable() else None
        wiring.local_ray(settings).down()


@pytest.mark.e2e
def test_the_main_job_promotes_a_challenger_that_learned_the_new_trend(finished) -> None:
    settings, outcome, _ = finished
    assert outcome.verdict == "promote"
    assert outcome.action == f"promoted version {outcome.challenger} to @champion"
    registry = wiring.open_registry(settings)
    assert registry.alias(CHAMPION) == outcome.champion == outcome.challenger == 2
    assert "meme" in registry.load_predictor(CHAMPION).labels
    # the timeline: a drift flag after the trend started, labels, a challenger, the verdict
    events = [e.what for e in outcome.timeline.events]
    flagged = outcome.timeline.first("drift flagged")
    assert flagged is not None and flagged.day >= 5
    assert any(re.match(r"\d+ labels committed", e) for e in events) and outcome.labels_committed > 0
    assert any(e.startswith("version 2 registered as @challenger") for e in events)
    # the lift is the models' doing: the challenger tags the trend's posts right, the champion cannot
    traffic = outcome.ab_traffic
    assert traffic.fit_rate("champion", "meme") == 0.0
    assert traffic.fit_rate("challenger", "meme") > 0.6
    lift = outcome.report["lift"]
    assert lift["cs_low"] > 0


@pytest.mark.e2e
def test_serving_follows_the_promotion_without_a_restart(finished) -> None:
    settings, outcome, _ = finished
    s = wiring.serving_control(settings)
    deployed = s.admin.config()
    arms = {d["name"]: d["user_config"] for d in deployed["applications"][0]["deployments"]}
    assert arms["champion"]["version"] == outcome.champion == 2
    assert arms["challenger"]["version"] is None and s.experiments.current() is None


@pytest.mark.slow  # a second first-champion training (about 5 minutes): `make test-slow`
@pytest.mark.e2e
def test_the_cli_and_the_main_job_reach_the_same_first_verdict(finished, tmp_path: Path, capsys) -> None:
    """The main job's first champion came out of continual_training; `trendloop ingest` + `trendloop train` in
    another home on the same feed and days register the same snapshot with the same verdict."""
    settings, _, config = finished
    other = tmp_path / "cli.toml"
    shared_key = f'\n[privacy]\nkey_file = "{settings.key_file.resolve()}"\n'  # snapshots hold its pseudonyms
    other.write_text(re.sub(r'home = ".*"', f'home = "{tmp_path / "home"}"', config.read_text(), count=1) + shared_key)
    feed, labels = str(settings.feed_dir), str(settings.feed_dir / "oracle" / "labels")
    until = settings.simulate.day_start(SIZE.seed_days).isoformat()
    for args in (["ingest", feed, "--until", until, "--labels", labels], ["train"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--config", str(other), *args])
        assert (exit_.value.code or 0) == 0, capsys.readouterr().err
    ours, theirs = wiring.open_registry(load_settings(other)), wiring.open_registry(settings)
    mine = ours.client.get_model_version(ours.model_name, "1")
    job = theirs.client.get_model_version(theirs.model_name, "1")
    assert mine.tags["snapshot"] == job.tags["snapshot"]
    assert (mine.tags["gate"], job.tags["gate"]) == ("passed", "passed")
    assert mine.tags["gate_reasons"] == job.tags["gate_reasons"]
    assert ours.alias(CHAMPION) == 1


@pytest.mark.e2e
def test_the_run_leaves_its_log_and_drift_checks_on_the_traffic_it_served(finished) -> None:
    settings, outcome, _ = finished
    assert outcome.log is not None and outcome.log.exists()
    checks = list(settings.checks_dir.glob("*/drift.json"))
    flagged = [json.loads(p.read_text()) for p in checks if json.loads(p.read_text())["verdict"]["drifted"]]
    assert flagged and all(c["traffic"] == "served" for c in flagged)


@pytest.mark.e2e
def test_no_raw_user_id_is_stored_anywhere_after_the_loop(finished) -> None:
    """Every file of the home (Parquet cell by cell, zips and gzip inside, SQLite and logs byte by byte) and every
    task Label Studio holds: no id of a posting user or a viewer, only pseudonyms. The simulated feed is left out:
    it stands for the social network's own data, which trendloop reads."""
    settings, _, _ = finished
    posters = set(pd.read_parquet(settings.feed_dir / "users.parquet")["user_id"])
    viewers = set(Audience(viewers=SIZE.viewers).user_ids())
    assert find(settings.home, posters | viewers, skip=[settings.feed_dir]) == []
    project = wiring.labeling_project(settings)
    tasks = [t.model_dump(mode="json") for t in project.client.tasks.list(project=project.id, page_size=500)]
    assert len(tasks) == wiring.label_queue(settings).counts()["pushed"] > 0  # every task the loop pushed
    assert find_in_text(json.dumps(tasks), posters | viewers) == []
    # what is stored is the pseudonyms: the posters' in the snapshot, the viewers' in the prediction log
    pseudonyms = wiring.pseudonyms(settings)
    stored = set(Store(settings.store_dir).head().manifest()["user_id"].to_pylist())
    assert stored and stored <= {pseudonyms.of(u) for u in posters}
    served = set(PredictionLog(settings.predictions_dir).read(columns=["user_id"])["user_id"].to_pylist())
    assert served and served <= {pseudonyms.of(v) for v in viewers}


@pytest.mark.unit
def test_the_main_job_s_own_choices_give_way_to_yours(tmp_path: Path) -> None:
    def job(toml: str):
        config = tmp_path / "trendloop.toml"
        config.write_text(f'home = "{tmp_path / "home"}"\n{toml}')
        return job_settings(load_settings(config), DemoSize())

    image_only = job("")
    assert image_only.features.on_ingest is False
    assert (image_only.ab.tau, image_only.ab.max_latency_increase) == (0.3, 0.5)
    assert image_only.active_learning.batch_size == DemoSize().labels == 300
    assert job('[train]\nside = ["caption"]\n').features.on_ingest is True  # a fusion recipe reads them
    kept = job("[features]\non_ingest = true\n[ab]\ntau = 0.1\n[active_learning]\nbatch_size = 80\n")  # yours win
    assert kept.features.on_ingest is True and kept.ab.tau == 0.1 and kept.active_learning.batch_size == 80
    strategy_only = job('[active_learning]\nstrategy = "margin"\n')  # a section without a batch size: the job's
    assert (strategy_only.active_learning.strategy, strategy_only.active_learning.batch_size) == ("margin", 300)


@pytest.mark.integration
def test_the_main_job_draws_no_mlflow_download_bars(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """The gate's verdict is read back from MLflow during the job: its tqdm bar must not reach the terminal."""
    import mlflow.artifacts  # noqa: PLC0415 - only this test needs it

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, artifact_location=(tmp_path / "art").as_uri(), cache_dir=tmp_path / "models")
    run_id = registry.start_run("a run", {}, {})
    (tmp_path / "gate.json").write_text("{}")
    registry.client.log_artifact(run_id, str(tmp_path / "gate.json"))
    registry.finish_run(run_id)

    def download(into: str) -> None:
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="gate.json", dst_path=str(tmp_path / into), tracking_uri=uri
        )

    capfd.readouterr()
    download("outside")  # MLflow draws its bar by default: the assertion below could fail
    assert "Downloading artifacts" in capfd.readouterr().err
    with _logging_to(tmp_path / "job.log"):
        download("during the job")
    assert capfd.readouterr().err == ""
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # the job's choice ends with the job


@pytest.mark.integration
def test_a_label_studio_port_held_by_another_server_stops_the_job_before_it_starts(
    label_studio: LocalLabelStudio, tmp_path: Path
) -> None:
    """Another checkout's Label Studio on the port: the job says so at once, not at the push minutes later."""
    config = tmp_path / "trendloop.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n[labelstudio]\nport = {label_studio.port}\n')
    settings = load_settings(config)
    with pytest.raises(LabelingError, match=rf"something else answers on port {label_studio.port}"):
        run_demo(settings, SIZE)
    assert not settings.feed_dir.exists() and not (settings.home / "mlflow.db").exists()  # nothing simulated
    assert label_studio.status().running  # and the other server was left alone


@pytest.mark.unit
def test_a_serving_port_held_by_another_home_stops_the_job_before_it_starts(tmp_path: Path) -> None:
    """Another home's app on serving.port: found when Ray starts, after the first training, it would cost minutes."""
    port = free_port()
    config = tmp_path / "trendloop.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n[serving]\nport = {port}\n')
    settings = load_settings(config)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(RayError, match=rf"serving\.port = {port}; set free ports"):
            run_demo(settings, SIZE)
    assert not settings.feed_dir.exists() and not (settings.home / "mlflow.db").exists()  # nothing simulated
    assert not wiring.local_ray(settings).running()
