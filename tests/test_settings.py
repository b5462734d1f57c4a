"""Settings: defaults with no config, one file, TRENDLOOP_* variables on top, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.errors import ConfigError
from trendloop.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in [k for k in os.environ if k.startswith("TRENDLOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_embedded_default_needs_no_config() -> None:
    settings = load_settings()
    assert settings.home == Path(".trendloop")
    assert settings.store_dir == Path(".trendloop/store") and settings.feed_dir == Path(".trendloop/feed")
    assert settings.simulate.posts_per_day == 200 and settings.ingest.max_side == 1080


def test_file_then_environment_then_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "trendloop.toml").write_text(
        'home = "/srv/trendloop"\n'
        "[simulate]\nseed = 11\nposts_per_day = 50\n"
        '[[simulate.trends]]\nkind = "new_class"\nname = "pixels"\nlook = "pixel_art"\nstart_day = 2\n'
        "[ingest]\nmax_side = 512\nworkers = 2\n"
    )
    settings = load_settings()  # ./trendloop.toml is picked up
    assert settings.home == Path("/srv/trendloop") and settings.simulate.seed == 11
    assert [t.name for t in settings.simulate.trends] == ["pixels"]
    assert settings.ingest.limits().max_side == 512 and settings.ingest.worker_count() == 2

    monkeypatch.setenv("TRENDLOOP_SIMULATE__SEED", "12")
    monkeypatch.setenv("TRENDLOOP_INGEST__WORKERS", "3")
    settings = load_settings()
    assert settings.simulate.seed == 12 and settings.simulate.posts_per_day == 50  # merged, not replaced
    assert settings.ingest.workers == 3 and settings.ingest.max_side == 512
    assert load_settings(home=Path("elsewhere")).home == Path("elsewhere")


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "conf" / "prod.toml"
    path.parent.mkdir()
    path.write_text("[ingest]\nmax_pixels = 1000\n")
    monkeypatch.setenv("TRENDLOOP_CONFIG", str(path))
    assert load_settings().ingest.max_pixels == 1000


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[ingest]\nworkers = -1\n", {}, "setting ingest.workers: Input should be greater than or equal to 0"),
        ("[ingest]\ncolour = 'red'\n", {}, "setting ingest.colour: Extra inputs are not permitted"),
        ("[simulate\n", {}, "trendloop.toml:"),
        ("", {"TRENDLOOP_SIMULATE__IMAGE_SIZE": "huge"}, "setting simulate.image_size"),
    ],
)
def test_bad_settings_name_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict, message: str
) -> None:
    (tmp_path / "trendloop.toml").write_text(text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
