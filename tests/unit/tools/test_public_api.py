"""``stageflow_otel.tools.__all__`` is a sorted tuple of exactly what the package exposes."""

from __future__ import annotations
import __future__

from types import ModuleType

import stageflow_otel
from stageflow_otel import tools


def test_all_is_a_sorted_tuple_of_every_public_name() -> None:
    exported = tools.__all__
    assert isinstance(exported, tuple)
    assert list(exported) == sorted(exported)
    public = {
        name
        for name in dir(tools)
        if not name.startswith("_")
        and not isinstance(getattr(tools, name), ModuleType | __future__._Feature)
    }
    assert public == set(exported)


def test_the_package_re_exports_the_same_objects() -> None:
    shared = [name for name in stageflow_otel.__all__ if hasattr(tools, name)]
    assert "ToolExecutor" in shared
    for name in shared:
        assert getattr(stageflow_otel, name) is getattr(tools, name), name
