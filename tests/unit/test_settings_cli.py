import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import relmon
from relmon.cli import build_parser, main
from relmon.errors import ConfigError
from relmon.settings import (
    BudgetConfig,
    DetectorConfig,
    PlannerConfig,
    SamplingRates,
    env_names,
    load_settings,
    reference,
)

ROOT = Path(__file__).resolve().parents[2]


def test_exported_names():
    assert sorted(relmon.__all__) == sorted(
        ["ConfigError", "RelmonError", "Settings", "get_settings", "load_settings"]
    )


def test_defaults_are_the_public_contract():
    s = load_settings()
    assert (s.topics.impressions, s.topics.catalog, s.topics.review, s.topics.dlq) == (
        "relmon.impressions",
        "relmon.catalog",
        "relmon.teacher-review",
        "relmon.dlq",
    )
    assert s.clickhouse.database == "relmon"
    assert s.bind_host == "127.0.0.1" and s.clickhouse.host == "127.0.0.1"


def test_settings_are_frozen_and_secret_is_masked(monkeypatch):
    monkeypatch.setenv("RELMON_CLICKHOUSE_PASSWORD", "hunter2")
    s = load_settings()
    assert s.clickhouse.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    with pytest.raises(Exception, match="frozen"):
        s.scorer.batch_size = 3  # type: ignore[misc]


def test_every_setting_has_one_generated_variable_and_a_description():
    names = [name for name, _ in env_names()]
    assert len(names) == len(set(names)) and all(n.startswith("RELMON_") for n in names)
    for name, field in env_names():
        assert field.description, name
        assert not field.description.startswith("RELMON_"), f"{name} repeats its name by hand"
    # names kept from the flat settings: a prefix + field, or the field's older name
    assert {"RELMON_ALERT_WINDOW_S", "RELMON_RATE_HEAD", "RELMON_SCORE_CALIBRATION"} <= set(names)
    assert {"RELMON_KAFKA_BOOTSTRAP", "RELMON_TOPIC_DLQ", "RELMON_ALERTS_IN_WORKER"} <= set(names)


def test_sections_are_the_components_configs(monkeypatch):
    # a component's defaults are written once: built in code, a section reads no environment
    plain = load_settings()
    assert (plain.plans, plain.detector, plain.sampling) == (
        PlannerConfig(),
        DetectorConfig(),
        SamplingRates(),
    )
    monkeypatch.setenv("RELMON_SKETCH_CAPACITY", "777")
    monkeypatch.setenv("RELMON_ALERT_MIN_LIFT", "1.5")
    s = load_settings(rate_tail=0.5, scoring_budget_pps="120")
    assert isinstance(s.plans, PlannerConfig) and s.plans.sketch_capacity == 777
    assert isinstance(s.detector, DetectorConfig) and s.detector.min_lift == 1.5
    assert isinstance(s.sampling, SamplingRates) and s.sampling.tail == 0.5
    assert isinstance(s.budget, BudgetConfig) and (s.budget.mode, s.budget.pairs_per_s) == (
        "fixed",
        120.0,
    )
    with pytest.raises(ConfigError, match="no such settings: rate_haed"):
        s.with_overrides(rate_haed=0.1)


def test_a_section_and_its_own_flat_field_together_are_refused():
    plans = PlannerConfig(sketch_capacity=300)
    assert load_settings(plans=plans).plans.sketch_capacity == 300
    assert load_settings(plans=plans, rate_tail=0.5).sampling.tail == 0.5  # another section's
    for kwargs in (
        {"plans": plans, "sketch_capacity": 900},
        {"sketch_capacity": 900, "plans": plans},
    ):
        with pytest.raises(ConfigError, match="plans= is given whole and sketch_capacity beside"):
            load_settings(**kwargs)


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("RELMON_KAFKA_BOOTSTRAP", "localhost", "RELMON_KAFKA_BOOTSTRAP"),
        ("RELMON_SAMPLE_RATE", "0", "RELMON_SAMPLE_RATE"),
        ("RELMON_CLICKHOUSE_DATABASE", "drop table;", "RELMON_CLICKHOUSE_DATABASE"),
        ("RELMON_PROVIDER", "tpu", "RELMON_PROVIDER"),
        ("RELMON_HEARTBEAT_INTERVAL_S", "10", "RELMON_HEARTBEAT_INTERVAL_S"),
        ("RELMON_ALERT_SCAN_WINDOWS", "9", "RELMON_ALERT_SCAN_WINDOWS=9 must be at most"),
        ("RELMON_SCORE_CALIBRATION", "1.2.3,4", "RELMON_SCORE_CALIBRATION: Value error"),
        ("RELMON_SCORE_CALIBRATION", "platt", "or two numbers alpha,beta"),
        ("RELMON_SCORE_CALIBRATION", "1,nan", "RELMON_SCORE_CALIBRATION"),
        ("RELMON_INTRA_OP_THREADS", "2", "was renamed RELMON_SCORER_THREADS"),
    ],
)
def test_config_errors_name_the_variable(monkeypatch, env, value, fragment):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_settings()


@pytest.mark.parametrize(
    ("value", "calibration"),
    [("card", "card"), ("none", None), ("5.2,0.42", (5.2, 0.42)), ("-1e-3,2", (-0.001, 2.0))],
)
def test_score_calibration_is_typed_for_the_scorer(monkeypatch, value, calibration):
    monkeypatch.setenv("RELMON_SCORE_CALIBRATION", value)
    settings = load_settings()
    assert settings.scorer.calibration == calibration
    assert (
        load_settings(score_calibration=settings.to_env()["RELMON_SCORE_CALIBRATION"]) == settings
    )


def test_cli_config_error_stops_with_message(monkeypatch, capsys):
    monkeypatch.setenv("RELMON_KAFKA_BOOTSTRAP", "nope")
    relmon.get_settings.cache_clear()
    try:
        assert main(["migrate"]) == 2
    finally:
        relmon.get_settings.cache_clear()
    assert "RELMON_KAFKA_BOOTSTRAP" in capsys.readouterr().err


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_has_help(capsys):
    commands = list(_subcommands(build_parser()))
    for required in [
        "demo",
        "broker",
        "store",
        "worker",
        "replay",
        "dashboard",
        ("model", "build"),
        ("model", "eval"),
        "doctor",
    ]:
        assert (required,) in commands or required in commands
    # the entry point itself, as a user runs it; then every subcommand's help in this process
    out = subprocess.run(
        [sys.executable, "-m", "relmon", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: relmon" in out and "--help" in out
    for command in commands:
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0, command
        out = capsys.readouterr().out
        assert "usage: relmon" in out and "--help" in out, command


def test_compose_agrees_with_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "worker", "dashboard"} <= set(services)
    assert "KRaft" in (ROOT / "docker-compose.yml").read_text()
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    fields = {name for name, _ in env_names()}
    for name in ("worker", "dashboard"):
        env = services[name]["environment"]
        unknown = set(env) - fields
        assert not unknown, f"{name} sets variables relmon does not read: {unknown}"
        host, port = env["RELMON_KAFKA_BOOTSTRAP"].split(":")
        assert (
            f"PLAINTEXT://{host}:{port}"
            in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        )
        assert env["RELMON_CLICKHOUSE_HOST"] == "clickhouse"
        assert env["RELMON_CLICKHOUSE_PORT"] == "8123"
        assert (
            env["RELMON_CLICKHOUSE_DATABASE"]
            == services["clickhouse"]["environment"]["CLICKHOUSE_DB"]
        )
        assert (
            env["RELMON_CLICKHOUSE_USER"]
            == services["clickhouse"]["environment"]["CLICKHOUSE_USER"]
        )
        # values must pass relmon's own validation
        load_settings(
            **{k.removeprefix("RELMON_").lower(): v for k, v in env.items() if "${" not in v}
        )
    assert services["worker"]["environment"]["RELMON_ALERTS_IN_WORKER"] == "true"
    dash = services["dashboard"]
    assert f"127.0.0.1:{dash['environment']['RELMON_DASHBOARD_PORT']}:" in dash["ports"][0]
    for service in services.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), "published ports bind loopback"


def test_readme_documents_every_setting_and_starts_with_two_commands():
    readme = (ROOT / "README.md").read_text()
    for name, _ in env_names():
        assert f"`{name}`" in readme, f"README lacks {name}"
    assert reference() in readme, "README's settings tables differ from `relmon settings`"
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_a_child_environment_gives_back_the_same_settings(monkeypatch, tmp_path):
    s = load_settings(
        home=tmp_path,
        score_calibration="none",
        category_thresholds={"Area Rugs": 0.4},
        alert_sinks="kafka,webhook",
        rate_head=0.123456789,
        alert_webhook_url="https://hooks.example/x",
        alerts_in_worker=True,
        bad_threshold=0.3,
    )
    env = s.to_env()
    assert env["RELMON_SCORE_CALIBRATION"] == "none" and "RELMON_CATALOG_FILE" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == s
    assert load_settings(score_calibration="1.5,0.25").to_env()["RELMON_SCORE_CALIBRATION"] == (
        "1.5,0.25"
    )


def test_a_dotenv_file_sets_section_fields_below_the_environment(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("RELMON_RATE_HEAD=0.3\nRELMON_ALERT_WINDOW_S=60\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELMON_ALERT_WINDOW_S", "120")
    s = load_settings()
    assert (s.sampling.head, s.alerts.window_s) == (0.3, 120)
    assert load_settings(alert_window_s=30).alerts.window_s == 30  # code over both
