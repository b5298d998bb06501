"""Self-contained HTML reports: escaping, embedded images, atomic writes, and a real browser's view.

The browser tests open the page in headless Chromium (tests/browser.py) and include negative
cases, so a check that could never fail does not pass for one that works.
"""

from __future__ import annotations

import base64
import math
import re
from datetime import datetime, timezone

import matplotlib.pyplot as plt
import numpy as np
import pytest
from browser import check_page, chromium  # noqa: F401  (chromium is a fixture)
from PIL import Image as PILImage

import trainwell
from trainwell.htmlreport import (
    Code,
    Image,
    KeyValues,
    Section,
    Table,
    Text,
    Verdict,
    format_value,
    render_page,
    write_report,
)
from trainwell.train.plots import save_figure

EVIL = '<script>alert("x")</script>'


def make_png(path, title="curve", seed=0):
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6, 3), constrained_layout=True)
    ax.plot(np.cumsum(rng.normal(size=50)), label="train")
    ax.plot(np.cumsum(rng.normal(size=50)), "--", label="val")
    ax.set(title=title, xlabel="epoch", ylabel="loss")
    ax.legend()
    return save_figure(fig, path)


def full_report(tmp_path):
    curves, lr = make_png(tmp_path / "curves.png", "loss"), make_png(tmp_path / "lr.png", "lr finder", seed=1)
    return [
        Section("Question", [
            Text("Does batch normalisation let a deeper MLP train as fast as a shallow one?\n\n"
                 "Five seeds per arm; 95% confidence intervals from a t distribution."),
            Verdict(True, "BatchNorm speeds up training of the 8-layer MLP.",
                    "Validation accuracy after 5 epochs: +6.1 points (CI 4.2 to 8.0)."),
            Verdict(False, "BatchNorm improves the final test accuracy.", "Difference within noise."),
            Verdict(None, "Dropout interacts with BatchNorm."),
        ]),
        Section("Results", [
            Table(["arm", "seeds", "val acc", "test acc", "p-value"],
                  [["baseline", 5, 0.81234, 0.80871, None],
                   ["batchnorm", 5, 0.87345, 0.81002, 0.00123],
                   ["batchnorm + dropout", 5, 0.86011, float("nan"), 0.4321]],
                  caption="Mean over seeds", highlight={1}),
            KeyValues({"epochs": 5, "learning rate": 0.003, "optimizer": "adamw"}, caption="Settings"),
            Image(curves, caption="Loss per epoch, mean of five seeds"),
            Image(lr, caption="Learning-rate finder", alt="loss against learning rate"),
        ]),
        Section("Reproduce", [Code("trainwell compare configs/bn.yaml --seeds 5 --out runs/bn")]),
    ]


# --- the page as text --------------------------------------------------------------------------------


def test_user_text_is_escaped_everywhere(tmp_path):
    page = render_page(EVIL, [Section(EVIL, [
        Text(EVIL), Table([EVIL], [[EVIL]], caption=EVIL), KeyValues({EVIL: EVIL}), Code(EVIL),
        Verdict(True, EVIL, EVIL), Image(make_png(tmp_path / "a.png"), caption=EVIL, alt=EVIL)])],
        subtitle=EVIL)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 15  # title twice, every other field once


def test_page_is_self_contained_and_well_formed(tmp_path):
    page = render_page("Report", full_report(tmp_path), subtitle="sub")
    assert page.startswith("<!doctype html>")
    assert '<html lang="en">' in page and '<meta charset="utf-8">' in page and "<title>Report</title>" in page
    # Nothing fetched from elsewhere: no links, scripts, fonts or remote URLs.
    assert not re.search(r"<(script|link|iframe)\b|https?://|@import|url\(", page)
    imgs = re.findall(r"<img [^>]*>", page)
    assert len(imgs) == 2
    for tag in imgs:
        assert 'src="data:image/png;base64,' in tag and "max-width:100%" in tag and re.search(r'alt="[^"]+"', tag)
    assert f"trainwell {trainwell.__version__}" in page


def test_embedded_image_decodes_to_the_original_bytes(tmp_path):
    png = make_png(tmp_path / "fig.png")
    page = render_page("t", [Section("s", [Image(png)])])
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(data) == png.read_bytes()
    assert 'alt="fig"' in page  # no caption or alt given: the file name still describes it


def test_mime_type_follows_the_suffix(tmp_path):
    svg = tmp_path / "dot.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    assert 'src="data:image/svg+xml;base64,' in render_page("t", [Section("s", [Image(svg)])])
    with pytest.raises(ValueError, match="unknown image type"):
        render_page("t", [Section("s", [Image(tmp_path / "notes.txt")])])


def test_missing_image_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        render_page("t", [Section("s", [Image(tmp_path / "nowhere.png")])])


@pytest.mark.parametrize("value, text", [
    (None, "–"), (float("nan"), "–"), (np.float32("nan"), "–"),
    (0.123456, "0.1235"), (1234567.0, "1.235e+06"), (0.5, "0.5"), (2.0, "2"), (np.float64(0.98765), "0.9877"),
    (60000, "60000"), (np.int64(7), "7"), (True, "True"), ("adamw", "adamw"), (math.inf, "inf"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_table_numbers_right_aligned_and_highlight():
    page = render_page("t", [Section("s", [Table(["a", "b"], [["x", 1.5], ["y", 2]], highlight={1})])])
    assert '<td>x</td><td class="num">1.5</td>' in page
    assert '<tr class="highlight"><td>y</td><td class="num">2</td></tr>' in page
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        render_page("t", [Section("s", [Table(["a", "b"], [["x"]])])])


def test_verdict_labels():
    page = render_page("t", [Section("s", [Verdict(True, "a"), Verdict(False, "b"), Verdict(None, "c")])])
    assert re.search(r'class="verdict held">.*>held</span> a', page)
    assert re.search(r'class="verdict failed">.*>did not hold</span> b', page)
    assert re.search(r'class="verdict unknown">.*>inconclusive</span> c', page)


def test_blank_lines_split_paragraphs_and_footer_time():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    page = render_page("t", [Section("s", [Text("one\nstill one\n\n\ntwo")])], generated=when)
    assert "<p>one\nstill one</p>\n<p>two</p>" in page
    assert "2026-01-02 03:04:05 UTC" in page


def test_unknown_block_is_a_type_error():
    with pytest.raises(TypeError, match="cannot render a str"):
        render_page("t", [Section("s", ["plain string"])])


def test_write_report_is_atomic(tmp_path):
    out = write_report(tmp_path / "report.html", "Title", [Section("s", [Text("body")])])
    assert out == tmp_path / "report.html" and "<p>body</p>" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary files left
    # A failing render leaves the previous report untouched.
    with pytest.raises(FileNotFoundError):
        write_report(out, "Other", [Section("s", [Image(tmp_path / "gone.png")])])
    assert "<p>body</p>" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# --- the page in a browser ---------------------------------------------------------------------------


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path, chromium):  # noqa: F811
    report = write_report(tmp_path / "report.html", "BatchNorm & depth <ablation>", full_report(tmp_path),
                          subtitle="5 seeds, digits")
    check = check_page(report, tmp_path / "report.png", chromium)
    assert check.title == "BatchNorm & depth <ablation>"
    assert check.images == 2 and check.broken_images == []
    assert check.console_errors == []
    assert "DID NOT HOLD" in check.text.upper() and "INCONCLUSIVE" in check.text.upper() and "0.8734" in check.text
    assert check.screenshot.stat().st_size > 10_000
    with PILImage.open(check.screenshot) as shot:
        assert shot.format == "PNG" and shot.size == check.size


@pytest.mark.slow
def test_browser_check_sees_a_broken_image(tmp_path, chromium):  # noqa: F811
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><title>broken</title><p>text</p><img src="missing.png" alt="x">')
    check = check_page(page, tmp_path / "broken.png", chromium)
    assert len(check.broken_images) == 1 and check.broken_images[0].endswith("/missing.png")


@pytest.mark.slow
def test_browser_check_sees_console_errors(tmp_path, chromium):  # noqa: F811
    page = tmp_path / "error.html"
    page.write_text('<!doctype html><title>error</title><p>text</p><script>console.error("boom")</script>')
    check = check_page(page, tmp_path / "error.png", chromium)
    assert check.images == 0 and check.broken_images == []
    assert any("boom" in e for e in check.console_errors)
