"""report.html: written by a real run, self-contained, with its plots, escaped, and drawn by a
headless Chromium when one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from modelquant.report.html import render_html
from modelquant.report.model import BackendResult, Gate, Report
from tests.pipeline_runs import run_recipe

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    """The tiny digits recipe with an analysis before quantize, writing json, md and html."""
    out = tmp_path_factory.mktemp("html-run")
    report, _ = run_recipe(
        tiny_checkpoint,
        out,
        data={
            "validation": {"source": "digits", "split": "val"},
            "calibration": {"source": "digits", "split": "train", "samples": 128},
            "evaluation": {"source": "digits", "split": "test"},
        },
        stages=[
            {"export": {"opset": 17}},
            {"analyze": {"accuracy": True, "samples": 32}},
            {"quantize": {"precision": "int8"}},
        ],
        output={"formats": ["json", "md", "html"]},
    )
    return report, out / "report.html"


class _Loads(HTMLParser):
    """Every tag and every attribute that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "data", "action") and value:
                self.refs.append(value)


def _sections(text: str) -> dict[str, str]:
    """Figure id -> its markup."""
    return dict(re.findall(r'<figure id="([^"]+)">(.*?)</figure>', text, flags=re.S))


def test_the_run_writes_a_self_contained_page(run: tuple[Report, Path]) -> None:
    report, page = run
    text = page.read_text()
    assert text == render_html(report)  # from the report alone, the same every time
    loads = _Loads()
    loads.feed(text)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(loads.tags)
    assert all(ref.startswith("#") for ref in loads.refs), loads.refs
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text)
    assert "@import" not in text
    assert not re.search(r"url\(\s*['\"]?(?!#)", text)  # only references inside the page
    assert "<style>" in text


def test_the_page_shows_the_comparison_gates_plots_and_environment(
    run: tuple[Report, Path],
) -> None:
    report, page = run
    text = page.read_text()
    figures = _sections(text)
    assert "<svg" in figures["timeline"]
    for stage in ("1 export", "2 analyze", "3 quantize"):
        assert stage in figures["timeline"]
    plot = figures["accuracy-latency-cpu"]
    assert "<svg" in plot and "batch 1" in plot and "batch 8" in plot
    assert "p50 latency (ms)" in plot and "top-1 accuracy" in plot
    assert "baseline (baseline.onnx)" in plot and "compressed (model.int8.onnx)" in plot
    worst = next(s for s in report.stages if s.name == "analyze").details["layers"][0]["layer"]
    assert worst in figures["sensitivity-1"]
    assert "metric drop with only this layer quantized" in figures["sensitivity-1"]
    assert "max_accuracy_drop" in text and '<td class="pass">pass</td>' in text
    assert report.environment.cpu in text and "intra-op threads: cpu: 1 (set)" in text


def test_variants_are_points_and_a_file_that_ran_twice_is_one(run: tuple[Report, Path]) -> None:
    report, _ = run
    compressed = report.compressed
    cpu = compressed.backends["cpu"]
    slower = {bs: s.model_copy(update={"p50": s.p50 * 3}) for bs, s in cpu.latency_ms.items()}
    variant = compressed.model_copy(
        update={
            "path": "model.int8.npu.onnx",
            "backends": {"cpu": cpu.model_copy(update={"latency_ms": slower, "accuracy": 0.5})},
        }
    )
    same = compressed.model_copy()  # the compressed file itself, listed again
    text = render_html(report.model_copy(update={"variants": {"npu": variant, "again": same}}))
    plot = _sections(text)["accuracy-latency-cpu"]
    assert "variant npu (model.int8.npu.onnx)" in plot
    assert "compressed (model.int8.onnx) = variant again" in plot
    assert "variant again (" not in plot


def test_text_from_the_report_is_escaped(run: tuple[Report, Path]) -> None:
    report, _ = run
    evil = "<script>alert(1)</script>"
    gate = Gate(name="x<b>", threshold=0.1, value=0.2, passed=False, detail=evil)
    text = render_html(
        report.model_copy(update={"recipe": {**report.recipe, "name": evil}, "gates": [gate]})
    )
    assert "<script" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "x&lt;b&gt;" in text
    assert '<td class="fail">FAIL</td>' in text


def test_a_report_without_latency_still_renders(run: tuple[Report, Path]) -> None:
    report, _ = run

    def untimed(entry: BackendResult) -> BackendResult:
        why = dict.fromkeys(("1", "8"), "not timed: no latency asked for")
        return entry.model_copy(update={"latency_ms": {}, "untimed": why})

    bare = report.model_copy(
        update={
            "baseline": report.baseline.model_copy(
                update={"backends": {"cpu": untimed(report.baseline.backends["cpu"])}}
            ),
            "compressed": report.compressed.model_copy(
                update={"backends": {"cpu": BackendResult(skipped="onnxruntime is missing")}}
            ),
            "deltas": report.deltas.model_copy(update={"speedup": {}}),
        }
    )
    text = render_html(bare)
    assert "accuracy-latency-cpu" not in _sections(text)
    assert "No latency was measured" in text
    assert "not timed: no latency asked for" in text and "onnxruntime is missing" in text
    assert "<svg" in _sections(text)["timeline"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt install chromium)")
def test_headless_chromium_draws_the_page(run: tuple[Report, Path], tmp_path: Path) -> None:
    _, page = run
    png = tmp_path / "report.png"
    # No network: the page must draw from the file alone (--disable-* keep Chromium's own
    # background fetches off too).
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1200,2000",
        page.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert png.is_file()
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL comes with matplotlib
        assert png.stat().st_size > 50_000
        return
    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, tables, plot markers; not blank
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
