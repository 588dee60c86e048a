"""Every YAML and TOML block of the pipeline files page is a valid pipeline file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stageflow_otel.pipeline_files import check_pipeline_file
from tests.docs.test_code_blocks import NO_RUN, REPO_ROOT, CodeBlock, code_blocks

PAGE = REPO_ROOT / "docs" / "pipeline-files.md"
BLOCKS = [
    block
    for block in code_blocks(PAGE)
    if block.language in ("yaml", "toml") and NO_RUN not in block.flags
]


def test_the_page_shows_the_format_in_both_languages() -> None:
    assert {block.language for block in BLOCKS} == {"yaml", "toml"}


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_the_block_is_a_valid_pipeline_file(block: CodeBlock, tmp_path: Path) -> None:
    path = tmp_path / f"block.{block.language}"
    path.write_text(block.code, encoding="utf-8")
    assert [str(problem) for problem in check_pipeline_file(path, environ={})] == []
