"""Settings refuse nonsense: enumerated values, strict booleans and ranges, each error naming its variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import SECTIONS, Settings, SettingsError


@pytest.mark.parametrize("env, says", [
    ({"CODA_PULL_TRIGGER": "dayend"}, "CODA_PULL_TRIGGER='dayend': must be 'events' or 'day_end'"),
    ({"CODA_TORCH_ON_LOOP": "ture"}, "CODA_TORCH_ON_LOOP='ture': must be true or false"),
    ({"CODA_PERSONALIZE": "everything"}, "CODA_PERSONALIZE='everything': must be 'all', 'mlp' or 'head'"),
    ({"CODA_SECURITY_PROTOCOL": "TLS"}, "CODA_SECURITY_PROTOCOL='TLS': must be 'PLAINTEXT', 'SSL'"),
    ({"CODA_K_NEIGHBOURS": "0"}, "CODA_K_NEIGHBOURS='0': must be greater than or equal to 1"),
    ({"CODA_SIGMA": "1.5"}, "CODA_SIGMA='1.5': must be less than or equal to 1"),
    ({"CODA_CLASSIFIER_SHARE": "nan"}, "CODA_CLASSIFIER_SHARE='nan': must be a finite number"),
    ({"CODA_BROKER_PORT": "70000"}, "CODA_BROKER_PORT='70000': must be less than or equal to 65535"),
    ({"CODA_BATCH_SIZE": "many"}, "CODA_BATCH_SIZE='many': must be a valid integer"),
    ({"CODA_BATCH_MAX": "10"}, "CODA_BATCH_MAX=10 is below CODA_BATCH_SIZE=25"),
])
def test_nonsense_is_refused_naming_the_variable_and_what_it_accepts(env: dict[str, str], says: str) -> None:
    """Enumerated values, strict booleans and numeric ranges are checked when settings are made."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert says in str(caught.value)


def test_valid_values_parse_and_round_trip_through_the_environment() -> None:
    """Booleans in their usual spellings, any-case log levels; to_env reproduces the settings exactly."""
    s = Settings.from_env({"CODA_TORCH_ON_LOOP": "false", "CODA_LOG_LEVEL": "info", "CODA_PULL_TRIGGER": "day_end",
                           "CODA_STATE_DIR": "/tmp/x", "CODA_SIGMA": "0.3"})
    assert (s.torch_on_loop, s.log_level, s.pull_trigger, s.state_dir, s.sigma) == \
        (False, "INFO", "day_end", Path("/tmp/x"), 0.3)
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({}) == Settings()


def test_replace_keeps_the_api_and_validates() -> None:
    """`replace` returns new frozen settings and refuses what `from_env` refuses."""
    s = Settings()
    t = s.replace(k_neighbours=5, state_dir=Path("/tmp/y"))
    assert (t.k_neighbours, s.k_neighbours, t.state_dir) == (5, 100, Path("/tmp/y"))
    with pytest.raises(ValueError, match="CODA_ARM_MODE"):
        s.replace(arm_mode="bucket")
    with pytest.raises(ValueError):
        s.k_neighbours = 3  # type: ignore[misc]


def test_the_cli_refuses_bad_settings_with_one_line() -> None:
    """`coda` exits 2 with the variable named, before any command runs."""
    import os

    done = subprocess.run([sys.executable, "-m", "ops.cli", "config"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CODA_PULL_TRIGGER": "dayend"})
    assert done.returncode == 2
    assert "CODA_PULL_TRIGGER='dayend': must be 'events' or 'day_end'" in done.stderr


def test_readme_configuration_table_is_the_settings() -> None:
    """The README lists every environment variable with its default, as `coda config --markdown` prints it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [f"| {section} | `{env}` | `{default}` | {name} |" for section, env, default, name in Settings().table()]
    missing = [row for row in rows if row not in readme.splitlines()]
    assert not missing, f"README configuration table is stale; run `coda config --markdown`: {missing}"


def test_sections_hold_every_setting_once() -> None:
    """broker, matching, device, experiment: each field in one section; an unknown section is refused."""
    settings = Settings()
    merged = {k: v for section in SECTIONS for k, v in settings.section(section).items()}
    assert list(merged) == list(Settings.model_fields)
    assert settings.section("matching")["k_neighbours"] == 100
    with pytest.raises(KeyError, match="expected one of broker, matching, device, experiment"):
        settings.section("paper")
