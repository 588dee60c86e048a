"""``--store``, ``runs``, ``runs show`` and ``resume``, as users run them (subprocesses)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from stageflow_otel.runs import SQLiteRunStore
from tests.cli.support import run_cli

PIPELINE = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from stageflow_otel import Pipeline

    COUNTS = Path(__file__).with_name("counts.txt")


    def counted(name):
        with COUNTS.open("a") as counts:
            counts.write(name + "\\n")


    async def load(ctx):
        counted("load")
        return {"order": {"id": 7, "lines": [1, 2, 3]}}


    async def charge(ctx):
        counted("charge")
        if os.environ.get("FAIL_CHARGE"):
            raise ConnectionError("gateway down")
        return {"charged": True}


    async def ship(ctx):
        counted("ship")
        return {"shipped": True}


    shop = (
        Pipeline("shop")
        .with_stage("load", load)
        .with_stage("charge", charge, dependencies=["load"])
        .with_stage("ship", ship, dependencies=["charge"])
    )
    changed = (
        Pipeline("shop")
        .with_stage("load", load)
        .with_stage("charge", charge, dependencies=["load"])
        .with_stage("ship", ship, dependencies=["load"])
    )
    """
)
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "shop.py").write_text(PIPELINE, encoding="utf-8")
    return tmp_path


def env(project: Path, **extra: str) -> dict[str, str]:
    return {"XDG_DATA_HOME": str(project / "data"), **extra}


def session(project: Path) -> tuple[str, ...]:
    return ("--no-live", "--metrics-port", "0", "--out", str(project / "out"))


def counts(project: Path) -> list[str]:
    return (project / "counts.txt").read_text().split()


def test_a_failed_run_is_listed_shown_and_resumed(project: Path) -> None:
    failed = run_cli(
        "run", "shop.py:shop", "--store", "--checkpoints", *session(project),
        cwd=project, env=env(project, FAIL_CHARGE="1"),
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    store_file = project / "data" / "stageflow-otel" / "runs.sqlite3"
    assert f"store     {store_file}  (with checkpoints)" in failed.stdout

    listed = run_cli("runs", cwd=project, env=env(project))
    assert listed.returncode == 0, listed.stderr
    (run_id,) = RUN_ID.findall(listed.stdout)
    row = next(line for line in listed.stdout.splitlines() if run_id in line)
    assert "shop" in row
    assert "fail" in row
    assert "charge (ConnectionError)" in row

    shown = run_cli("runs", "show", run_id[:8], cwd=project, env=env(project))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    stages = lines[next(i for i, line in enumerate(lines) if "stages (3)" in line) + 1 :]
    assert [re.sub(r"\s+\d+\.\d ms", "", line).rstrip() for line in stages] == [
        "    └── load  ✓ ok  checkpointed",
        "        └── charge  ✗ fail",
        "            ConnectionError: gateway down",
        "            └── ship  · pending",
    ]

    resumed = run_cli("resume", run_id[:8], *session(project), cwd=project, env=env(project))
    assert resumed.returncode == 0, resumed.stderr
    assert counts(project) == ["load", "charge", "charge", "ship"]  # load ran once

    after = run_cli("runs", "--jaeger-url", "http://jaeger:16686/", cwd=project, env=env(project))
    new_row = after.stdout.splitlines()[2]
    assert f"↺ {run_id[:8]}" in new_row
    assert "✓ ok" in new_row
    only_failed = run_cli(
        "runs", "--status", "fail", "--since", "1h", cwd=project, env=env(project)
    )
    assert RUN_ID.findall(only_failed.stdout) == [run_id]
    none = run_cli("runs", "--pipeline", "other", cwd=project, env=env(project))
    assert none.stdout.startswith("no runs matching pipeline other in ")


def test_what_cannot_be_resumed_is_refused_with_the_reason(project: Path) -> None:
    without = run_cli(
        "run", "shop.py:shop", "--store", *session(project),
        cwd=project, env=env(project, FAIL_CHARGE="1"),
    )  # fmt: skip
    assert without.returncode == 1
    (run_id,) = RUN_ID.findall(run_cli("runs", cwd=project, env=env(project)).stdout)
    refused = run_cli("resume", run_id, *session(project), cwd=project, env=env(project))
    assert refused.returncode == 1
    assert "recorded without checkpoints" in refused.stderr

    store = SQLiteRunStore(project / "data" / "stageflow-otel" / "runs.sqlite3")
    store.close()
    with_checkpoints = run_cli(
        "run", "shop.py:shop", "--store", "--checkpoints", *session(project),
        cwd=project, env=env(project, FAIL_CHARGE="1"),
    )  # fmt: skip
    assert with_checkpoints.returncode == 1
    newest = RUN_ID.findall(run_cli("runs", "--limit", "1", cwd=project, env=env(project)).stdout)
    changed = run_cli(
        "resume", newest[0], "--pipeline", "shop.py:changed", *session(project),
        cwd=project, env=env(project),
    )  # fmt: skip
    assert changed.returncode == 1
    assert "stage 'ship': dependencies ['charge'] -> ['load']" in changed.stderr, changed.stderr

    unknown = run_cli("runs", "show", "nope", cwd=project, env=env(project))
    assert unknown.returncode == 2
    assert "there is no run 'nope'" in unknown.stderr
    lonely = run_cli("run", "shop.py:shop", "--checkpoints", *session(project), cwd=project)
    assert lonely.returncode == 2
    assert "--checkpoints needs a store" in lonely.stderr
    bad_since = run_cli("runs", "--since", "yesterday", cwd=project, env=env(project))
    assert bad_since.returncode == 2
    assert "expected a duration ago" in bad_since.stderr


def test_the_environment_names_the_store(project: Path) -> None:
    url = f"sqlite://{project / 'env.sqlite3'}"
    done = run_cli(
        "run", "shop.py:shop", *session(project),
        cwd=project, env=env(project, STAGEFLOW_OTEL_STORE=url),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    store = SQLiteRunStore(project / "env.sqlite3")
    try:
        (run,) = store.list_runs()
    finally:
        store.close()
    assert (run.pipeline, run.status, run.source) == ("shop", "ok", f"{project / 'shop.py'}:shop")
    assert not run.checkpoints


def test_the_demo_records_its_runs_in_the_default_store(project: Path) -> None:
    demo = run_cli("demo", "--runs", "2", "--store", *session(project), env=env(project))
    assert demo.returncode == 0, demo.stderr
    history = project / "data" / "stageflow-otel" / "runs.sqlite3"
    assert f"history   stageflow-otel runs  recorded in {history}" in demo.stdout
    store = SQLiteRunStore(history)
    try:
        runs = store.list_runs()
    finally:
        store.close()
    assert [(r.status, r.source, r.identity) for r in runs] == [
        ("ok", "stageflow_otel.demo:build_order_pipeline", {"request_id": "demo-2"}),
        ("ok", "stageflow_otel.demo:build_order_pipeline", {"request_id": "demo-1"}),
    ]


def test_old_runs_are_pruned_with_their_stages_and_checkpoints(project: Path) -> None:
    for fail in ("1", ""):
        recorded = run_cli(
            "run", "shop.py:shop", "--store", "--checkpoints", *session(project),
            cwd=project, env=env(project, FAIL_CHARGE=fail),
        )  # fmt: skip
        assert recorded.returncode == (1 if fail else 0), recorded.stderr
    failed, ok = (
        RUN_ID.findall(run_cli("runs", "--status", s, cwd=project, env=env(project)).stdout)[0]
        for s in ("fail", "ok")
    )

    kept = run_cli("runs", "prune", "--older-than", "1h", cwd=project, env=env(project))
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("deleted 0 runs started before ")
    only_failed = run_cli(
        "runs", "prune", "--older-than", "2099-01-01", "--status", "fail",
        cwd=project, env=env(project),
    )  # fmt: skip
    assert only_failed.stdout.startswith("deleted 1 run started before 2099-01-01")
    assert RUN_ID.findall(run_cli("runs", cwd=project, env=env(project)).stdout) == [ok]
    store = SQLiteRunStore(project / "data" / "stageflow-otel" / "runs.sqlite3")
    try:
        assert store.read_checkpoints(failed) == []
        assert store.read_checkpoints(ok) != []
        assert store.query(
            "SELECT COUNT(*) FROM stageflow_run_stages WHERE run_id = ?", (failed,)
        ) == [(0,)]
    finally:
        store.close()
    missing = run_cli("runs", "prune", cwd=project, env=env(project))
    assert missing.returncode == 2
    assert "--older-than" in missing.stderr
