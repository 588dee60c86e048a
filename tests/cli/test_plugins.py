"""A real plugin distribution, built and installed into a fresh virtual environment.

The test writes a small project whose ``pyproject.toml`` declares a stage, an interceptor and
an event sink under the ``stageflow_otel.*`` entry-point groups (and one broken entry point),
installs it with pip (hatchling builds it) into a new virtual environment that also sees
this environment's packages, and runs that environment's ``stageflow-otel``: the plugins are
found by name from their distribution's metadata, not from a registry the test fills in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.cli.support import cli_env

PLUGIN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "sfo-demo-plugins"
version = "1.2.3"

[project.entry-points."stageflow_otel.stages"]
shout = "sfo_demo_plugins:shout"
broken = "sfo_demo_plugins.missing:stage"

[project.entry-points."stageflow_otel.interceptors"]
stamp = "sfo_demo_plugins:Stamp"

[project.entry-points."stageflow_otel.sinks"]
jsonl = "sfo_demo_plugins:JsonLinesSink"
"""

PLUGIN_CODE = '''\
"""Plugins for stageflow-otel: a stage, an interceptor and an event sink."""

import json


async def shout(ctx, suffix="!"):
    return {"text": str(ctx.data.get("text", "hello")).upper() + suffix}


class Stamp:
    name = "stamp"

    def __init__(self, label="stamped"):
        self.label = label

    async def intercept(self, call, call_next):
        output = await call_next(call)
        return output.with_metadata(stamp=self.label)


class JsonLinesSink:
    def __init__(self, path):
        self.path = path

    def emit(self, *, type, data=None):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"type": type}) + "\\n")

    def try_emit(self, *, type, data=None):
        self.emit(type=type, data=data)
'''

PIPELINE = """\
name: plugged
event_sinks:
  - use: jsonl
    args: {{path: {events}}}
stages:
  shout:
    runner: shout
    args: {{suffix: "!!"}}
    interceptors:
      - use: stamp
        args: {{label: from-a-plugin}}
"""


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new virtual environment with the plugin distribution installed."""
    root = tmp_path_factory.mktemp("plugins")
    project = root / "sfo-demo-plugins"
    (project / "sfo_demo_plugins").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PLUGIN_PYPROJECT, encoding="utf-8")
    (project / "sfo_demo_plugins" / "__init__.py").write_text(PLUGIN_CODE, encoding="utf-8")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root
    )
    # This environment's packages (stageflow-otel, pip, hatchling) are visible from the new one;
    # addsitedir also runs their .pth files (the editable install of stageflow-otel).
    outer = sysconfig.get_paths()["purelib"]
    Path(site.stdout.strip(), "outer-environment.pth").write_text(
        f"import site; site.addsitedir({outer!r})\n", encoding="utf-8"
    )
    install = _run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", str(project)],
        root,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def test_the_installed_plugins_are_listed_with_their_distribution(
    plugin_venv: Path, tmp_path: Path
) -> None:
    result = _run([str(plugin_venv), "-m", "stageflow_otel", "plugins"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stageflow_otel.stages",
        "  broken  sfo-demo-plugins 1.2.3  sfo_demo_plugins.missing:stage",
        "  shout  sfo-demo-plugins 1.2.3  sfo_demo_plugins:shout",
        "stageflow_otel.interceptors",
        "  stamp  sfo-demo-plugins 1.2.3  sfo_demo_plugins:Stamp",
        "stageflow_otel.sinks",
        "  jsonl  sfo-demo-plugins 1.2.3  sfo_demo_plugins:JsonLinesSink",
    ]


def test_check_names_the_broken_plugin_and_loads_the_others(
    plugin_venv: Path, tmp_path: Path
) -> None:
    result = _run([str(plugin_venv), "-m", "stageflow_otel", "plugins", "--check"], tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1].startswith(
        "  broken  sfo-demo-plugins 1.2.3  sfo_demo_plugins.missing:stage  BROKEN: stage plugin "
        "'broken' from distribution sfo-demo-plugins 1.2.3 (entry point 'broken = "
        "sfo_demo_plugins.missing:stage' in group 'stageflow_otel.stages') failed to load: "
        "ModuleNotFoundError"
    )
    assert [line.rsplit("  ", 1)[-1] for line in lines[2:]] == [
        "ok", "stageflow_otel.interceptors", "ok", "stageflow_otel.sinks", "ok"
    ]  # fmt: skip
    assert result.stderr == "1 plugin failed to load\n"


def test_a_pipeline_file_runs_the_plugins_by_name(plugin_venv: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    (tmp_path / "plugged.yaml").write_text(
        PIPELINE.format(events=json.dumps(str(events))), encoding="utf-8"
    )
    validate = _run(
        [str(plugin_venv), "-m", "stageflow_otel", "validate", "plugged.yaml"], tmp_path
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr

    out = tmp_path / "out"
    run = _run(
        [str(plugin_venv), "-m", "stageflow_otel", "run", "plugged.yaml", "--data",
         '{"text": "plugins"}', "--metrics-port", "0", "--out", str(out), "--no-live"],
        tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    spans = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    names = sorted(span["name"] for span in spans)
    assert names == ["interceptor stamp", "pipeline.run plugged", "stage.run shout"]
    stage = next(span for span in spans if span["name"] == "stage.run shout")
    assert stage["attributes"]["stageflow.stage.output.keys"] == ["text"]
    assert stage["attributes"]["code.function.name"] == "sfo_demo_plugins.shout"
    recorded = [json.loads(line)["type"] for line in events.read_text().splitlines()]
    assert recorded[0] == "pipeline.started"
    assert recorded[-1] == "pipeline.completed"


def test_a_broken_plugin_fails_only_the_stage_that_names_it(
    plugin_venv: Path, tmp_path: Path
) -> None:
    (tmp_path / "mixed.yaml").write_text(
        textwrap.dedent(
            """\
            name: mixed
            stages:
              good:
                runner: shout
                interceptors: [use: stamp]
              bad:
                runner: broken
            """
        ),
        encoding="utf-8",
    )
    result = _run([str(plugin_venv), "-m", "stageflow_otel", "validate", "mixed.yaml"], tmp_path)
    assert result.returncode == 2
    (problem,) = result.stdout.splitlines()
    assert problem.startswith(
        "mixed.yaml:7:13: stages.bad.runner: stage plugin 'broken' from distribution "
        "sfo-demo-plugins 1.2.3 (entry point 'broken = sfo_demo_plugins.missing:stage' in group "
        "'stageflow_otel.stages') failed to load: ModuleNotFoundError: No module named "
        "'sfo_demo_plugins.missing'. Fix: repair or reinstall sfo-demo-plugins"
    )
