"""Every ```python block of README.md and docs/*.md runs, so the docs cannot rot.

Each block is executed on its own, in a fresh namespace, in a scratch working directory.
Blocks with top-level ``await`` run inside ``anyio.run``; blocks may also call ``anyio.run``
themselves. A block fenced as ```python no-run is a fragment (a signature, a configuration
excerpt, code that needs a server of yours) and is skipped, with that reason.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))
NO_RUN = "no-run"

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class CodeBlock:
    path: Path
    line: int
    language: str
    flags: tuple[str, ...]
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def code_blocks(path: Path) -> Iterator[CodeBlock]:
    """The fenced code blocks of a Markdown file, with the line of their opening fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        words = opening.group("info").split()
        body: list[str] = []
        index += 1
        while index < len(lines):
            closing = _FENCE.match(lines[index])
            if closing and closing.group("fence").startswith(fence) and not closing.group("info"):
                break
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        start = index - len(body)
        index += 1
        if words:
            yield CodeBlock(path, start, words[0], tuple(words[1:]), "\n".join(body) + "\n")


PYTHON_BLOCKS = [
    block
    for document in DOCUMENTS
    for block in code_blocks(document)
    if block.language in ("python", "py")
]


def test_the_documents_have_runnable_python_blocks() -> None:
    runnable = [block for block in PYTHON_BLOCKS if NO_RUN not in block.flags]
    assert len(runnable) >= 10
    documents = {block.path.name for block in runnable}
    assert {
        "README.md",
        "telemetry.md",
        "configuration.md",
        "coming-from-stageflow.md",
    } <= documents


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_only_uses_known_flags(block: CodeBlock) -> None:
    assert set(block.flags) <= {NO_RUN}, f"{block.id}: unknown fence flags {block.flags}"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A scratch directory, a hermetic environment, and global state put back afterwards."""
    import structlog

    from stageflow_otel.core.extensions import default_extensions
    from stageflow_otel.observability import uninstrument

    monkeypatch.chdir(tmp_path)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name in ("METRICS_PORT", "METRICS_ADDR", "INTERCEPTOR_SPANS", "CANONICAL_LOGS"):
        monkeypatch.delenv(f"STAGEFLOW_OTEL_{name}", raising=False)
    try:
        yield
    finally:
        uninstrument()
        assert default_extensions.hooks == (), "a block left telemetry installed"
        structlog.reset_defaults()


def run_block(block: CodeBlock) -> dict[str, Any]:
    """Execute a block as a module would run; returns its namespace."""
    code = compile(
        block.code,
        f"{block.path}:{block.line}",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    if code.co_flags & inspect.CO_COROUTINE:

        async def main() -> None:
            await eval(code, namespace)

        anyio.run(main)
    else:
        exec(code, namespace)  # noqa: S102 - running the docs is the point
    return namespace


@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_runs(block: CodeBlock) -> None:
    if NO_RUN in block.flags:
        pytest.skip(
            f"{block.id} is fenced as `python {NO_RUN}`: a fragment (a signature, an excerpt, or "
            "code that needs a service of yours), not a program to run"
        )
    run_block(block)
