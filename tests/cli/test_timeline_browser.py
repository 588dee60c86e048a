"""The timeline HTML in a real headless Chromium: its DOM and a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stageflow_otel.demo import example_stage_names
from tests.cli.support import run_cli
from tests.support.servers import in_ci

pytestmark = pytest.mark.components

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _chromium() -> str:
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if path is None:
        message = "chromium not found (Debian package chromium; scripts/ensure-system-deps.sh)"
        if in_ci():
            pytest.fail(f"{message}; CI must provide it", pytrace=False)
        pytest.skip(message)
    return path


def _chromium_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class _Bars(HTMLParser):
    """Collects the timeline's bar elements and the page's visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if "bar" in attributes.get("class", "").split():
            self.bars.append(attributes)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    out = tmp_path_factory.mktemp("timeline")
    result = run_cli("demo", "--runs", "1", "--metrics-port", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    spans = [
        json.loads(line) for line in (out / "trace.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return out / "timeline.html", spans


def test_the_dom_has_one_bar_per_span_and_every_stage(
    timeline: tuple[Path, list[dict[str, object]]], tmp_path: Path
) -> None:
    html, spans = timeline
    result = _chromium_run(tmp_path, "--dump-dom", html.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    parser = _Bars()
    parser.feed(result.stdout)
    assert sorted(bar["data-span-id"] for bar in parser.bars) == sorted(
        str(span["span_id"]) for span in spans
    )
    assert sorted(bar["data-name"] for bar in parser.bars) == sorted(
        str(span["name"]) for span in spans
    )
    text = " ".join(parser.text)
    assert [name for name in example_stage_names() if name not in text] == []
    outcomes = {bar["class"].split()[1] for bar in parser.bars}
    assert outcomes == {"ok", "skip"}  # the skipped customs_declaration stands out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_screenshot_of_the_timeline(
    timeline: tuple[Path, list[dict[str, object]]], tmp_path: Path
) -> None:
    html, _ = timeline
    shot = tmp_path / "timeline.png"
    result = _chromium_run(
        tmp_path, f"--screenshot={shot}", "--window-size=1400,900", html.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file()
    assert _png_size(shot) == (1400, 900)
    # A blank or broken page compresses to a few KB; the chart does not.
    assert shot.stat().st_size > 30_000
