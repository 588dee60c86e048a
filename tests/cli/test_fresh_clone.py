"""A fresh clone of the repository, alone in an empty directory, works on its own.

``make demo`` builds the clone's own virtualenv and runs the demo; then the tests that read
the project's documents (the telemetry contract in ``docs/telemetry.md``, the dashboards, the
docs' code) run in that clone, which has nothing beside it: the project carries everything
they need.

Runs only with ``STAGEFLOW_OTEL_FRESH_CLONE=1`` (CI sets it): cloning, creating ``.venv`` and
installing the dependencies take minutes and need the package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.support import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("STAGEFLOW_OTEL_FRESH_CLONE") != "1",
    reason="opt-in (set STAGEFLOW_OTEL_FRESH_CLONE=1): clones the repository and builds a venv",
)

BUDGET_SECONDS = 600
# The tests that read files of the project rather than code: they must pass in the clone.
DOCUMENT_TESTS = ("tests/ops/test_dashboards.py", "tests/docs")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed for the fresh-clone check", pytrace=False)
    return path


def _clean_env() -> dict[str, str]:
    """This environment minus what would leak this checkout into the clone's own."""
    leaking = (
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "PYTEST_ADDOPTS",
    )
    env = {k: v for k, v in os.environ.items() if k not in leaking}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO_ROOT))
    )
    return env


def _make(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The demo records its runs under the user's data directory: keep that in the sandbox.
    env = {**_clean_env(), "XDG_DATA_HOME": str(_data_home(clone))}
    return subprocess.run(
        [_tool("make"), *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS,
        check=False,
    )


def _data_home(clone: Path) -> Path:
    """The clone's data directory: outside the clone's own directory, so nothing is beside it."""
    return clone.parent.with_name(f"{clone.parent.name}-data")


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-40:])


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clone of this repository in an empty directory of its own."""
    alone = tmp_path_factory.mktemp("fresh-clone")
    target = alone / "stageflow-otel"
    subprocess.run(
        [_tool("git"), "clone", "--quiet", str(REPO_ROOT), str(target)],
        check=True,
        timeout=120,
    )
    yield target
    shutil.rmtree(alone, ignore_errors=True)
    shutil.rmtree(_data_home(target), ignore_errors=True)


@pytest.fixture(scope="module")
def demo(clone: Path) -> subprocess.CompletedProcess[str]:
    """``make demo`` in the clone (which also builds its ``.venv``)."""
    return _make(clone, "demo")


def test_make_demo_works_on_a_fresh_clone(
    clone: Path, demo: subprocess.CompletedProcess[str]
) -> None:
    assert demo.returncode == 0, _tail(demo)
    assert (clone / ".venv" / "bin" / "python").exists()
    assert "trace of run 3/3" in demo.stdout, _tail(demo)
    assert "stage.run send_confirmation" in demo.stdout, _tail(demo)
    history = _data_home(clone) / "stageflow-otel" / "runs.sqlite3"
    assert f"history   stageflow-otel runs  recorded in {history}" in demo.stdout, _tail(demo)


def test_document_tests_pass_on_a_clone_with_nothing_beside_it(
    clone: Path, demo: subprocess.CompletedProcess[str]
) -> None:
    assert demo.returncode == 0, _tail(demo)
    # Nothing beside the clone (no sibling directory, no other checkout) the tests could lean on.
    assert [path.name for path in clone.parent.iterdir()] == [clone.name]
    result = _make(clone, "pytest", f"PYTEST_ARGS=-p no:cacheprovider {' '.join(DOCUMENT_TESTS)}")
    assert result.returncode == 0, _tail(result)
    assert " passed" in result.stdout, _tail(result)
    assert " failed" not in result.stdout, _tail(result)
