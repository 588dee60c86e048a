"""``__all__`` matches what the public modules expose."""

from __future__ import annotations
import __future__

import importlib
from types import ModuleType

import pytest

PUBLIC_MODULES = (
    "stageflow_otel",
    "stageflow_otel.core",
    "stageflow_otel.distributed",
    "stageflow_otel.helpers",
)


def public_names(module: ModuleType) -> set[str]:
    """Names a user would see in ``dir(module)``: no privates, submodules or compiler flags."""
    names = set()
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, ModuleType | __future__._Feature):
            continue
        names.add(name)
    return names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_a_sorted_tuple(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert list(exported) == sorted(exported)
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    unexported = sorted(public_names(module) - set(module.__all__))
    assert unexported == []


def test_the_package_re_exports_the_engine_objects() -> None:
    package = importlib.import_module("stageflow_otel")
    core = importlib.import_module("stageflow_otel.core")
    for name in package.__all__:
        if hasattr(core, name):
            assert getattr(package, name) is getattr(core, name), name


def test_the_check_notices_an_unexported_name() -> None:
    module = ModuleType("fake")
    module.__dict__.update({"__all__": ("Exported",), "Exported": 1, "Leaked": 2, "_private": 3})
    assert public_names(module) - set(module.__all__) == {"Leaked"}


def test_the_version_is_a_string() -> None:
    package = importlib.import_module("stageflow_otel")
    assert isinstance(package.__version__, str)
    assert package.__version__
