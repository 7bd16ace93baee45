"""The operator's settings: one model, its checks, and the one table in docs/operations.md that documents it."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import REPO
from workerpool_operator.kube.settings import OperatorSettings, SettingsError, env_name, load_settings


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("WORKERPOOL_OPERATOR_")]:
        monkeypatch.delenv(name)


def documented() -> dict[str, tuple[str, str]]:
    """``variable -> (flags, default)`` from the table of docs/operations.md ("Operator settings")."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Operator settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`WORKERPOOL_OPERATOR_"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_the_table_documents_every_setting_with_its_default() -> None:
    rows = documented()
    fields = OperatorSettings.model_fields
    assert sorted(rows) == sorted(env_name(name) for name in fields)
    defaults = OperatorSettings()
    for name, field in fields.items():
        _, default = rows[env_name(name)]
        value = getattr(defaults, name)
        if isinstance(value, bool):
            assert default == ("on" if value else "off"), name
        elif isinstance(value, int | float) and not isinstance(value, bool):
            assert default == f"`{value:g}`", name
        elif isinstance(value, str):
            assert default == f"`{value}`", name
        else:
            assert value in (None, ()) and default, f"{name}: say in the table what no value means"
        assert field.description, f"{name} has no description"


def test_every_flag_of_run_is_in_the_table() -> None:
    from workerpool_operator.cli import build_parser

    parser = build_parser()
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]  # type: ignore[index]
    flags = {option for action in run._actions for option in action.option_strings if option.startswith("--")}
    table = " ".join(flags_cell for flags_cell, _ in documented().values())
    assert sorted(f for f in flags - {"--help"} if f"`{f}" not in table) == []


def test_values_are_checked_and_named() -> None:
    assert load_settings(metrics_port=0).metrics_port == 0
    with pytest.raises(SettingsError, match=r"^--metrics-port: .*less than or equal to 65535"):
        load_settings(metrics_port=70000)
    with pytest.raises(SettingsError, match="must be <namespace>/<name>"):
        load_settings(lease="no-slash")
    with pytest.raises(SettingsError, match="retry period < renew deadline < lease duration"):
        load_settings(lease_duration=5, renew_deadline=6)
    with pytest.raises(SettingsError, match=r"^--log-format: "):
        load_settings(log_format="xml")


def test_the_environment_is_read_once_into_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_NAMESPACES", "shop, billing,")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_RETRY_DELAY", "2.5")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_VERBOSE", "1")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "")  # empty: the default, as unset
    settings = load_settings()
    assert settings.namespaces == ("shop", "billing") and not settings.clusterwide
    assert settings.retry_delay == 2.5 and settings.verbose and settings.metrics_port == 9847
    monkeypatch.setenv("WORKERPOOL_OPERATOR_RETRY_DELAY", "-1")
    assert settings.retry_delay == 2.5, "built once: a later change of the environment is not seen"
    with pytest.raises(SettingsError, match=r"^WORKERPOOL_OPERATOR_RETRY_DELAY: .*greater than or equal to 0"):
        load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.retry_delay = 1  # type: ignore[misc]
