"""Looking plugins up by name (the installed-distribution path is in tests/cli/test_plugins.py)."""

from __future__ import annotations

import pytest

from stageflow_otel.plugins import (
    INTERCEPTOR_GROUP,
    PLUGIN_GROUPS,
    SINK_GROUP,
    STAGE_GROUP,
    PluginError,
    PluginInfo,
    installed_plugins,
    load_plugin,
)


def test_the_groups() -> None:
    assert PLUGIN_GROUPS == (STAGE_GROUP, INTERCEPTOR_GROUP, SINK_GROUP)
    assert PLUGIN_GROUPS == (
        "stageflow_otel.stages",
        "stageflow_otel.interceptors",
        "stageflow_otel.sinks",
    )


@pytest.mark.parametrize("group", PLUGIN_GROUPS)
def test_an_unknown_name_says_what_is_installed_and_how_to_fix_it(group: str) -> None:
    installed = sorted(p.name for p in installed_plugins(group))  # type: ignore[arg-type]
    with pytest.raises(PluginError) as caught:
        load_plugin(group, "no-such-plugin")  # type: ignore[arg-type]
    error = caught.value
    assert (error.group, error.name, error.distribution) == (group, "no-such-plugin", None)
    listed = ", ".join(installed) if installed else "none is installed"
    assert error.reason.endswith(f"(entry-point group {group!r}; installed: {listed})")
    assert error.fix_hint is not None
    assert "stageflow-otel plugins" in error.fix_hint
    assert str(error) == f"{error.reason}. Fix: {error.fix_hint}"


def test_an_unknown_group_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown plugin group 'stageflow_otel\.stage'"):
        load_plugin("stageflow_otel.stage", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown plugin group"):
        installed_plugins("opentelemetry_instrumentor")  # type: ignore[arg-type]


def test_plugin_info_spells_the_entry_point() -> None:
    info = PluginInfo(STAGE_GROUP, "geo", "acme.geo:geocode", "acme-stages", "1.0")
    assert info.entry_point == "geo = acme.geo:geocode"
