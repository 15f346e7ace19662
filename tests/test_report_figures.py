"""Paper-ready figures, checked on the matplotlib objects: one y scale per figure, every point and interval
inside its axes, labels present, no JSON-like text, legends outside the data, point names that do not
overlap, one colour per architecture family, sized for a paper column, a vector PDF beside PNG and SVG.

``check_paper_ready`` is applied to every figure of the report built in ``test_report.py`` and in
``test_report_explain.py``; the tests here cover the helpers and show that the checks can fail.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.text import Text

from robustarch.report.figures import FAMILY_COLOURS, draw, family_colour, labels_clear
from robustarch.report.tables import slug

JSONISH = re.compile(r'[{}"]|emulate_normalized_inputs|random_start')
EPS = 1e-9


def _inside(ax: Any, xs: list[float], ys: list[float]) -> bool:
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    return all(x0 - EPS <= x <= x1 + EPS for x in xs) and all(y0 - EPS <= y <= y1 + EPS for y in ys)


def _texts(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def check_paper_ready(spec: dict[str, Any], folder: Path | None = None) -> None:
    """Assert the conventions of robustarch.report.figures on the figure drawn from ``spec``."""
    fig = draw(spec)
    try:
        width = fig.get_figwidth()
        assert width == pytest.approx(3.5 if len(spec["panels"]) == 1 else 7.16)
        assert fig._suptitle is None  # the caption is the report's, not inside the figure
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == len(spec["panels"])
        assert len({tuple(ax.get_ylim()) for ax in axes}) == 1, "one y scale per figure"
        y0, y1 = axes[0].get_ylim()
        assert y1 - y0 >= 10.0 or spec["id"].startswith("fig1"), "a panel never zooms into a few points"
        renderer = fig.canvas.get_renderer()
        for i, (ax, panel) in enumerate(zip(axes, spec["panels"], strict=True)):
            assert ax.get_xlabel() == panel["xlabel"] and (
                i % 2 == 0 or ax.get_ylabel() in ("", panel["ylabel"])
            )
            if panel["title"]:
                assert ax.get_title().replace("\n", " ") == panel["title"]
            for line in ax.get_lines():
                xs, ys = line.get_xdata(), line.get_ydata()
                if line.get_gid():
                    assert _inside(ax, list(xs), list(ys)), (spec["id"], line.get_gid())
            for coll in ax.collections:
                if isinstance(coll, LineCollection) and (coll.get_gid() or "").endswith("/err"):
                    pts = [p for seg in coll.get_segments() for p in seg]
                    assert _inside(ax, [p[0] for p in pts], [p[1] for p in pts]), (spec["id"], coll.get_gid())
                elif isinstance(coll, PathCollection) and coll.get_gid():
                    off = coll.get_offsets()
                    assert _inside(ax, list(off[:, 0]), list(off[:, 1]))
            labels = [t for t in ax.texts if (t.get_gid() or "").endswith("/label")]
            if labels:
                assert labels_clear(fig, ax, labels), (spec["id"], i)
            for j, s in enumerate(panel["series"]):
                if s.get("family"):
                    assert s["color"] == family_colour(s["family"])
                    artist = next(a for a in [*ax.get_lines(), *ax.collections] if a.get_gid() == f"{i}/{j}")
                    colour = artist.get_color() if hasattr(artist, "get_xdata") else artist.get_facecolor()[0]
                    assert plt.matplotlib.colors.to_hex(colour) == s["color"].lower()
        for text in _texts(fig):
            assert not JSONISH.search(text), (spec["id"], text)
        legends = list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend() is not None]
        assert legends, "every figure has a legend"
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in axes), spec["id"]
    finally:
        plt.close(fig)
    if folder is not None:
        name = slug(spec["id"])
        for ext in ("png", "svg", "pdf"):
            assert (folder / f"{name}.{ext}").stat().st_size > 1000
        pdf = (folder / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Subtype /Image" not in pdf  # vector: no raster inside


def _scatter_spec(names: list[str], xs: list[float], ys: list[float]) -> dict[str, Any]:
    series = [
        {"label": n, "style": "scatter", "x": [x], "y": [y], "ylo": None, "yhi": None, "points": [n],
         "runs": [[]], "family": "ResNet", "color": FAMILY_COLOURS["ResNet"], "marker": "o"}
        for n, x, y in zip(names, xs, ys, strict=True)
    ]  # fmt: skip
    panel = {
        "title": "FGSM (8/255)",
        "xlabel": "clean",
        "ylabel": "adv",
        "series": series,
        "label_points": True,
    }
    return {"id": "t", "title": "t", "panels": [panel]}


def test_point_names_are_placed_apart_or_left_to_the_legend():
    # three points close together: adjustText moves the names apart (or, failing that, removes them)
    spec = _scatter_spec(["ResNet-18", "ResNet-50", "ResNet-101"], [50.0, 50.2, 50.4], [40.0, 40.1, 40.2])
    check_paper_ready(spec)
    fig = draw(spec)
    try:
        ax = fig.axes[0]
        names = [t for t in ax.texts if t.get_gid().endswith("/label")]
        assert not names or labels_clear(fig, ax, names)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ResNet-18", "ResNet-50", "ResNet-101"]
        # the check itself can fail: two names put on the same spot overlap
        extra = [ax.text(50, 40, "DARTS"), ax.text(50, 40, "DARTS")]
        assert not labels_clear(fig, ax, extra)
    finally:
        plt.close(fig)


def test_a_single_point_never_fills_the_panel():
    spec = _scatter_spec(["ResNet-18"], [50.0], [50.0])
    fig = draw(spec)
    try:
        lo, hi = fig.axes[0].get_ylim()
        assert hi - lo >= 10.0 and lo < 50 < hi  # not 0.48-0.52 for one point
    finally:
        plt.close(fig)


def test_json_text_is_caught():
    spec = _scatter_spec(["ResNet-18"], [50.0], [50.0])
    spec["panels"][0]["title"] = 'PGD {"emulate_normalized_inputs":false}'
    with pytest.raises(AssertionError):
        check_paper_ready(spec)


def test_family_colours_are_one_per_family():
    assert len(set(FAMILY_COLOURS.values())) == len(FAMILY_COLOURS)
    assert family_colour("WRN") == family_colour("WRN")  # stable for families outside the table
    assert family_colour("ResNet") == FAMILY_COLOURS["ResNet"]


@pytest.mark.parametrize(
    ("text", "ok"),
    [("main-cifar10-paper-perturbed", True), ("x/../../etc/passwd", False), ("..", False), ("a\\b", False)],
)
def test_slugs_are_file_names(text: str, ok: bool):
    name = slug(text)
    assert re.fullmatch(r"[a-z0-9_-]+", name) and ".." not in name and "/" not in name
    assert (name == text) == ok
    assert slug("a/b") != slug("a-b")  # a changed id gets a hash: two ids never share a file
