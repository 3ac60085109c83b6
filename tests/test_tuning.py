"""Tuning profiles are data the settings object accepts, and the sweep can read them all."""

import pathlib

import pytest

from node import config
from tuning import sweep

PROFILES = sorted((pathlib.Path(__file__).parent.parent / "tuning" / "profiles").glob("*.toml"))


def test_there_are_profiles_and_a_default():
    assert "default" in [p.stem for p in PROFILES] and len(PROFILES) >= 3


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_loads_through_the_settings_object(path):
    assert isinstance(config.load(config_file=str(path), environ={}), config.Settings)
    text = path.read_text()
    for line in text.splitlines():
        key = line.split("#")[0].split("=")[0].strip()
        if key:
            assert key in {f for f, _, _ in config.documentation()}, key


def test_default_profile_is_the_built_in_defaults():
    assert config.load(config_file=str(sweep.PROFILES / "default.toml"), environ={}) == config.Settings()


def test_a_profile_with_an_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("io_thread = 3\n")
    with pytest.raises(config.SettingsError):
        config.load(config_file=str(bad), environ={})
