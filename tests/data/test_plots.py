"""SVG plots: the Mollweide projection at known points, histogram bars, escaping, accessible titles."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from opensci.data import plots

SVG = "{http://www.w3.org/2000/svg}"
R2 = math.sqrt(2)


@pytest.mark.parametrize(
    ("lon", "lat", "x", "y"),
    [
        (0.0, 0.0, 0.0, 0.0),
        (math.pi, 0.0, 2 * R2, 0.0),  # the equator's end: the major semi-axis, 2√2
        (-math.pi, 0.0, -2 * R2, 0.0),
        (0.0, math.pi / 2, 0.0, R2),  # the poles: the minor semi-axis, √2
        (1.0, -math.pi / 2, 0.0, -R2),
        (math.pi / 2, 0.0, R2, 0.0),  # on the equator x is linear in longitude
    ],
)
def test_mollweide_at_known_points(lon: float, lat: float, x: float, y: float) -> None:
    px, py = plots.mollweide(lon, lat)
    assert float(px) == pytest.approx(x, abs=1e-9)
    assert float(py) == pytest.approx(y, abs=1e-9)


def test_mollweide_is_equal_area_and_solves_its_equation() -> None:
    lat = np.radians(np.linspace(-89.5, 89.5, 181))
    _, y = plots.mollweide(np.zeros_like(lat), lat)
    theta = np.arcsin(y / R2)
    np.testing.assert_allclose(2 * theta + np.sin(2 * theta), np.pi * np.sin(lat), atol=1e-9)
    # Equal area: the area of the ellipse above a parallel is the sphere's cap area, scaled (4π ↔ 4π·2).
    # Ellipse area above y (semi-axes a=2√2, b=√2): a·b·(π/2 - θ - sin θ cos θ)·2 / 2 … compare with
    # the sphere's cap 2π(1 - sin φ), both as fractions of the whole.
    ellipse_fraction = (np.pi / 2 - theta - np.sin(theta) * np.cos(theta)) / np.pi
    cap_fraction = (1 - np.sin(lat)) / 2
    np.testing.assert_allclose(ellipse_fraction, cap_fraction, atol=1e-9)


def test_sky_positions_follow_the_astronomical_convention() -> None:
    x, y = plots.sky_xy([0.0, 90.0, 270.0, 359.0], [0.0, 0.0, 0.0, 30.0])
    assert x[0] == pytest.approx(0.0)
    assert x[1] < 0 < x[2]  # RA increases to the left
    assert x[1] == pytest.approx(-R2)
    assert x[3] > 0 and y[3] > 0  # just right of the centre, north is up


def test_histogram_bars_heights_and_tooltips() -> None:
    svg = plots.histogram_svg([0, 1, 2, 3], [2, 0, 4], title="flux", id_prefix="h-flux")
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "h-flux-title"
    assert root.find(f"{SVG}title").text == "Histogram of flux: 6 values in 3 bins"
    bars = root.findall(f"{SVG}rect")
    assert len(bars) == 3
    heights = [float(b.get("height")) for b in bars]
    assert heights[1] == 0 and heights[2] == pytest.approx(2 * heights[0])
    tips = [b.find(f"{SVG}title").text for b in bars]
    assert tips == ["[0, 1): 2", "[1, 2): 0", "[2, 3]: 4"]


def _text_boxes(root: ET.Element) -> list[tuple[float, float]]:
    """The vertical extent of each label: 11px text reaches ~9px above its baseline and ~3px below."""
    return [(float(t.get("y")) - 9, float(t.get("y")) + 3) for t in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("counts", [[9, 1, 1], [1, 1, 9], [5, 5, 5], [0, 9, 0], [1]])
def test_histogram_labels_never_overlap_the_bars(counts: list[int]) -> None:
    edges = [-123456.789 + i * 1000.5 for i in range(len(counts) + 1)]
    root = ET.fromstring(plots.histogram_svg(edges, counts, title="x"))
    bars = [b for b in root.findall(f"{SVG}rect") if float(b.get("height")) > 0]
    assert bars and any("max" in (t.text or "") for t in root.iter(f"{SVG}text"))
    for low, high in _text_boxes(root):
        for bar in bars:
            top, bottom = float(bar.get("y")), float(bar.get("y")) + float(bar.get("height"))
            assert high <= top or low >= bottom, (low, high, top, bottom)
    for low, _ in _text_boxes(root):
        assert low >= 0


def test_counts_in_plot_labels_agree_with_their_nouns() -> None:
    root = ET.fromstring(plots.histogram_svg([0, 1], [1], title="x"))
    assert root.find(f"{SVG}title").text == "Histogram of x: 1 value in 1 bin"
    sky = ET.fromstring(plots.sky_map_svg(np.ones((1, 1)), [0, 360], [-90, 90], title="c"))
    assert "c: 1 source," in sky.find(f"{SVG}title").text
    assert [p.find(f"{SVG}title").text for p in sky.findall(f"{SVG}path")] == ["1 cell with 1 source"]


def test_histogram_of_nothing_and_bad_edges() -> None:
    svg = plots.histogram_svg([], [], title="empty")
    assert "no values" in svg
    ET.fromstring(svg)
    with pytest.raises(ValueError):
        plots.histogram_svg([0, 1], [1, 2], title="x")


HOSTILE = "\"><script>alert(1)</script><x y='&"


def test_labels_and_ids_are_escaped() -> None:
    svg = plots.histogram_svg([0.5, 1.5], [3], title=HOSTILE, id_prefix=HOSTILE)
    assert "<script>" not in svg
    root = ET.fromstring(svg)  # still well-formed XML
    assert HOSTILE in root.find(f"{SVG}title").text
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", root.get("aria-labelledby") or "")
    sky = plots.sky_map_svg(
        np.ones((2, 4)), [0, 90, 180, 270, 360], [-90, 0, 90], title=HOSTILE, id_prefix="1"
    )
    assert "<script>" not in sky
    root = ET.fromstring(sky)
    assert HOSTILE in root.find(f"{SVG}title").text
    assert root.get("aria-labelledby", "").startswith("p-1")


def test_sky_map_draws_each_level_with_its_range() -> None:
    counts = np.zeros((18, 36), dtype=int)
    counts[9, 0] = 1000  # RA 0-10°, Dec 0-10°
    counts[8, 18] = 1  # RA 180-190°, Dec -10…0°
    svg = plots.sky_map_svg(counts, list(range(0, 361, 10)), list(range(-90, 91, 10)), title="cat")
    root = ET.fromstring(svg)
    assert "1001 sources" in root.find(f"{SVG}title").text
    paths = root.findall(f"{SVG}path")
    tips = sorted(p.find(f"{SVG}title").text for p in paths)
    assert tips == ["1 cell with 1 source", "1 cell with 1000 sources"]
    brightest = next(p for p in paths if "1000" in p.find(f"{SVG}title").text)
    assert brightest.get("fill") == plots.colour(1.0)
    # The RA 0-10° cell lies just left of the centre, above the equator.
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", brightest.get("d") or "")]
    xs, ys = numbers[0::2], numbers[1::2]
    width = float(root.get("width"))
    centre_x = width / 2
    assert max(xs) == pytest.approx(centre_x, abs=0.1) and min(xs) < centre_x
    # The cell starting at RA 180° hugs the right edge (RA 180 is the map's edge, RA grows leftwards).
    faint = next(p for p in paths if "with 1 source" in p.find(f"{SVG}title").text)
    fx = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", faint.get("d") or "")][0::2]
    assert min(fx) > centre_x + 0.9 * (width / 2 - 10)
    assert max(ys) < float(root.find(f"{SVG}ellipse").get("cy")) + 0.1


def test_sky_map_rejects_a_grid_that_does_not_fit_its_edges() -> None:
    with pytest.raises(ValueError):
        plots.sky_map_svg(np.ones((3, 3)), [0, 180, 360], [-90, 90], title="x")


def test_colour_scale_ends() -> None:
    assert plots.colour(0) == "#440154"
    assert plots.colour(1) == "#fde725"
    assert plots.colour(7) == "#fde725"
