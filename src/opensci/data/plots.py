"""Plots as standalone SVG text: a histogram from bin edges and counts, and a sky density map in the
Mollweide projection from a 2-D grid of counts. Pure Python and numpy, no plotting library.

Every label that may come from a dataset (column names, values) is escaped here; the SVG can be put
inline in a page as it is. Each plot carries a `<title>` (its accessible name, and a tooltip) and so
does each bar and sky cell. Colours come from CSS classes (`plot-*`, styled in opensci.css) with
fill colours of the sky map's density scale given inline, so the plots follow the page's theme.

Sky maps follow the usual astronomical convention (as healpy's `mollview`): right ascension 0° at the
centre, increasing to the left (east is left when looking up at the sky), declination up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape

import numpy as np
import numpy.typing as npt

SQRT2 = math.sqrt(2.0)
_ID_RE = re.compile(r"[^A-Za-z0-9_-]+")
# A perceptually ordered dark-to-bright scale (five stops, interpolated linearly in RGB).
_SCALE = ((0x44, 0x01, 0x54), (0x3B, 0x52, 0x8B), (0x21, 0x91, 0x8C), (0x5E, 0xC9, 0x62), (0xFD, 0xE7, 0x25))


def _e(value: object) -> str:
    """Text for an SVG element or attribute, escaped (quotes too)."""
    return escape(str(value), quote=True)


def svg_id(prefix: str) -> str:
    """A safe, valid XML id made from any text (hostile column names included)."""
    cleaned = _ID_RE.sub("-", prefix).strip("-") or "plot"
    return cleaned if cleaned[0].isalpha() else f"p-{cleaned}"


def fmt(value: float) -> str:
    """A short label for a number: integers as integers, others with 4 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def plural(n: int, word: str) -> str:
    """`1 source`, `2 sources`: a count with its noun agreeing."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _n(x: float) -> str:
    """A coordinate, rounded to keep the SVG small."""
    return f"{x:.2f}".rstrip("0").rstrip(".") if x == x else "0"


# --- histogram -------------------------------------------------------------------------------------------


def histogram_svg(
    edges: Sequence[float],
    counts: Sequence[int],
    *,
    title: str,
    id_prefix: str = "hist",
    width: int = 320,
    height: int = 140,
) -> str:
    """A histogram of `counts` over the bins `[edges[i], edges[i+1])`, as an SVG document fragment.

    `title` names the plot for screen readers (e.g. the column); each bar has a tooltip with its range
    and count. Empty input draws the axes with a "no values" note. Labels have bands of their own, above
    the bars (the tallest bar's count) and below the axis (the range), so they never cover a bar."""
    if len(counts) and len(edges) != len(counts) + 1:
        raise ValueError(f"{len(edges)} edges for {len(counts)} bins: need one more edge than bins")
    pid = svg_id(id_prefix)
    left, right, top, bottom = 6, 6, 18, 20  # 11px labels: top band 0-18, bottom band under the axis
    plot_w, plot_h = width - left - right, height - top - bottom
    total = int(sum(int(c) for c in counts))
    peak = max((int(c) for c in counts), default=0)
    label = f"Histogram of {title}: {plural(total, 'value')} in {plural(len(counts), 'bin')}"
    parts = [
        f'<svg class="plot plot-histogram" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-labelledby="{pid}-title">',
        f'<title id="{pid}-title">{_e(label)}</title>',
    ]
    if peak > 0:
        bar_w = plot_w / len(counts)
        for i, c in enumerate(counts):
            c = int(c)
            h = plot_h * c / peak
            if c and h < 1:
                h = 1.0  # a non-empty bin stays visible
            x = left + i * bar_w
            tip = f"[{fmt(edges[i])}, {fmt(edges[i + 1])}{']' if i == len(counts) - 1 else ')'}: {c}"
            parts.append(
                f'<rect class="plot-bar" fill="#1f6feb" x="{_n(x)}" y="{_n(top + plot_h - h)}" '
                f'width="{_n(max(bar_w - 1, 0.5))}" height="{_n(h)}"><title>{_e(tip)}</title></rect>'
            )
    else:
        parts.append(
            f'<text class="plot-label" x="{width / 2}" y="{top + plot_h / 2}" text-anchor="middle">'
            "no values</text>"
        )
    axis_y = top + plot_h
    parts.append(
        f'<line class="plot-axis" stroke="#656d76" x1="{left}" y1="{axis_y}" '
        f'x2="{width - right}" y2="{axis_y}"/>'
    )
    if len(edges):
        low, high = fmt(edges[0]), fmt(edges[-1])
        parts.append(f'<text class="plot-label" x="{left}" y="{height - 5}">{_e(low)}</text>')
        parts.append(
            f'<text class="plot-label" x="{width - right}" y="{height - 5}" text-anchor="end">'
            f"{_e(high)}</text>"
        )
    if peak:
        parts.append(f'<text class="plot-label" x="{left}" y="{top - 5}">max {peak}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- the Mollweide projection ------------------------------------------------------------------------------


def mollweide(
    lon: npt.ArrayLike, lat: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Project longitudes and latitudes (radians) to Mollweide x, y on the ellipse of semi-axes 2√2, √2.

    x = (2√2/π) λ cos θ, y = √2 sin θ, where 2θ + sin 2θ = π sin φ (solved by Newton's method)."""
    lam = np.asarray(lon, dtype=np.float64)
    phi = np.asarray(lat, dtype=np.float64)
    lam, phi = np.broadcast_arrays(lam, phi)
    theta = phi.copy()
    target = np.pi * np.sin(phi)
    for _ in range(50):
        f = 2 * theta + np.sin(2 * theta) - target
        d = 2 + 2 * np.cos(2 * theta)
        step = np.where(d > 1e-12, f / np.where(d > 1e-12, d, 1.0), 0.0)
        theta = theta - step
        if np.all(np.abs(step) < 1e-12):
            break
    poles = np.abs(np.abs(phi) - np.pi / 2) < 1e-9
    theta = np.where(poles, np.sign(phi) * np.pi / 2, theta)
    x = (2 * SQRT2 / np.pi) * lam * np.cos(theta)
    y = SQRT2 * np.sin(theta)
    return x, y


def sky_xy(
    ra_deg: npt.ArrayLike, dec_deg: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mollweide coordinates of sky positions (degrees): RA 0 at the centre, increasing to the left."""
    ra = np.asarray(ra_deg, dtype=np.float64) % 360.0
    lon = np.where(ra > 180.0, ra - 360.0, ra)
    return mollweide(np.radians(-lon), np.radians(np.asarray(dec_deg, dtype=np.float64)))


def colour(t: float) -> str:
    """The density scale at t in [0, 1], as #rrggbb."""
    t = min(max(float(t), 0.0), 1.0) * (len(_SCALE) - 1)
    i = min(int(t), len(_SCALE) - 2)
    f = t - i
    a, b = _SCALE[i], _SCALE[i + 1]
    return "#" + "".join(f"{round(a[k] + (b[k] - a[k]) * f):02x}" for k in range(3))


# --- the sky map -------------------------------------------------------------------------------------------


LEVELS = 12  # colours of the density scale


def _cells_path(cells: list[tuple[float, float, float, float]], sx: float, ox: float, oy: float) -> str:
    """SVG path data outlining RA/Dec cells (ra0, ra1, dec0, dec1) in page coordinates. Cells are small
    (a few degrees), so their corners joined by straight lines are close enough to the curved meridians."""
    if not cells:
        return ""
    c = np.asarray(cells, dtype=np.float64)
    ra0, ra1, dec0, dec1 = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    # Each cell stays on its side of the map's edge (RA 180°), decided by its middle: a cell ending at
    # 180 touches the left edge, one starting at 180 the right edge. (Grids have an edge at 180.)
    shift = np.where((ra0 + ra1) / 2 > 180.0, 360.0, 0.0)
    ras = np.stack([ra0, ra0, ra1, ra1], axis=1) - shift[:, None]
    decs = np.stack([dec0, dec1, dec1, dec0], axis=1)
    x, y = mollweide(np.radians(-ras), np.radians(decs))
    px, py = ox + sx * x, oy - sx * y
    out = []
    for k in range(len(cells)):
        out.append(
            f"M{px[k, 0]:.1f} {py[k, 0]:.1f}L{px[k, 1]:.1f} {py[k, 1]:.1f}"
            f"L{px[k, 2]:.1f} {py[k, 2]:.1f}L{px[k, 3]:.1f} {py[k, 3]:.1f}Z"
        )
    return "".join(out)


def sky_map_svg(
    counts: npt.ArrayLike,
    ra_edges: Sequence[float],
    dec_edges: Sequence[float],
    *,
    title: str,
    id_prefix: str = "sky",
    width: int = 640,
) -> str:
    """A sky density map: `counts[i, j]` sources in RA bin j (`ra_edges`, degrees, 0…360) and Dec bin i
    (`dec_edges`, degrees, -90…90), each cell coloured on a logarithmic scale, with a graticule every
    30° (RA) and 30° (Dec) and a colour bar. Empty cells are not drawn."""
    grid = np.asarray(counts, dtype=np.int64)
    if grid.ndim != 2 or grid.shape != (len(dec_edges) - 1, len(ra_edges) - 1):
        raise ValueError(
            f"a grid of shape {grid.shape} does not match {len(dec_edges)} x {len(ra_edges)} edges"
        )
    pid = svg_id(id_prefix)
    margin = 10
    legend_h = 34
    sx = (width - 2 * margin) / (4 * SQRT2)  # the ellipse spans 4√2 by 2√2 units
    map_h = 2 * SQRT2 * sx
    height = math.ceil(map_h + 2 * margin + legend_h)
    ox, oy = width / 2, margin + map_h / 2
    total = int(grid.sum())
    peak = int(grid.max()) if grid.size else 0
    label = (
        f"Sky density map of {title}: {plural(total, 'source')}, Mollweide projection, RA 0° at the centre"
    )
    parts = [
        f'<svg class="plot plot-sky" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-labelledby="{pid}-title">',
        f'<title id="{pid}-title">{_e(label)}</title>',
        f'<ellipse class="plot-sky-bg" fill="#f6f8fa" cx="{_n(ox)}" cy="{_n(oy)}" '
        f'rx="{_n(2 * SQRT2 * sx)}" ry="{_n(SQRT2 * sx)}"/>',
    ]
    # Cells are grouped by colour level (one path each, with its range as tooltip): a dense all-sky
    # catalogue makes thousands of cells, and one element per cell would make a page of megabytes.
    log_peak = math.log1p(peak) if peak > 1 else 1.0
    levels: dict[int, list[tuple[float, float, float, float]]] = {}
    bounds: dict[int, tuple[int, int]] = {}
    rows, cols = np.nonzero(grid)
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        c = int(grid[i, j])
        level = min(int(math.log1p(c) / log_peak * LEVELS), LEVELS - 1) if peak > 1 else LEVELS - 1
        levels.setdefault(level, []).append(
            (float(ra_edges[j]), float(ra_edges[j + 1]), float(dec_edges[i]), float(dec_edges[i + 1]))
        )
        low, high = bounds.get(level, (c, c))
        bounds[level] = (min(low, c), max(high, c))
    for level in sorted(levels):
        low, high = bounds[level]
        cells = levels[level]
        fill = colour(level / (LEVELS - 1))
        span = f"{low}-{high} sources" if high != low else plural(low, "source")
        tip = f"{plural(len(cells), 'cell')} with {span}"
        parts.append(
            f'<path class="plot-cells" fill="{fill}" stroke="{fill}" stroke-width="0.4" '
            f'd="{_cells_path(cells, sx, ox, oy)}">'
            f"<title>{_e(tip)}</title></path>"
        )
    parts.extend(_graticule(sx, ox, oy))
    parts.append(
        f'<ellipse class="plot-axis plot-outline" fill="none" stroke="#656d76" cx="{_n(ox)}" cy="{_n(oy)}" '
        f'rx="{_n(2 * SQRT2 * sx)}" '
        f'ry="{_n(SQRT2 * sx)}"/>'
    )
    parts.extend(_colour_bar(peak, width, int(margin + map_h + 8)))
    parts.append("</svg>")
    return "".join(parts)


def _graticule(sx: float, ox: float, oy: float) -> list[str]:
    out = []
    decs = np.linspace(-90, 90, 61)
    for ra in range(0, 360, 30):
        if ra == 180:
            continue  # the map's edge
        x, y = sky_xy(np.full_like(decs, ra), decs)
        pts = " ".join(f"{_n(ox + sx * a)},{_n(oy - sx * b)}" for a, b in zip(x, y, strict=True))
        out.append(
            f'<polyline class="plot-grid" fill="none" stroke="#8c959f" stroke-width="0.5" points="{pts}"/>'
        )
    for dec in (-60, -30, 0, 30, 60):
        x, y = sky_xy(np.array([180.0001, 179.9999]), np.array([dec, dec]))
        out.append(
            f'<line class="plot-grid" stroke="#8c959f" stroke-width="0.5" '
            f'x1="{_n(ox + sx * x[0])}" y1="{_n(oy - sx * y[0])}" '
            f'x2="{_n(ox + sx * x[1])}" y2="{_n(oy - sx * y[1])}"/>'
        )
        out.append(
            f'<text class="plot-label" x="{_n(ox + sx * x[1] + 4)}" y="{_n(oy - sx * y[1] - 2)}">'
            f"{dec}°</text>"
        )
    for ra in (0, 90, 270):
        x, y = sky_xy(np.array([ra]), np.array([0.0]))
        out.append(
            f'<text class="plot-label" x="{_n(ox + sx * x[0] + 2)}" y="{_n(oy - sx * y[0] + 12)}">'
            f"{ra}°</text>"
        )
    return out


def _colour_bar(peak: int, width: int, y: int) -> list[str]:
    bar_w, bar_h = 200, 10
    x0 = (width - bar_w) / 2
    out = [
        f'<rect x="{_n(x0 + bar_w * k / 20)}" y="{y}" width="{_n(bar_w / 20 + 0.5)}" height="{bar_h}" '
        f'fill="{colour(k / 19)}"/>'
        for k in range(20)
    ]
    out.append(f'<text class="plot-label" x="{_n(x0 - 6)}" y="{y + 9}" text-anchor="end">1</text>')
    out.append(
        f'<text class="plot-label" x="{_n(x0 + bar_w + 6)}" y="{y + 9}">'
        f"{max(peak, 1)} per cell (log scale)</text>"
    )
    return out
