"""Charts as inline SVG, for the report: a histogram and a bar chart, nothing more.

A few dozen lines of our own instead of matplotlib: the report must be one
self-contained file with no fonts or scripts, and matplotlib would add a second
plotting stack (and half a second of import) for two kinds of chart.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 420, 160
BAR = "#4c78a8"


def _axis(label: str) -> str:
    return f'<text x="0" y="{HEIGHT + 16}" font-size="11" fill="#555">{escape(label)}</text>'


def histogram(counts: list[int], edges: list[float], label: str) -> str:
    """Bars for `counts` between `edges` (len(counts) + 1 of them)."""
    if not counts or max(counts) == 0:
        return '<p class="none">no data</p>'
    top = max(counts)
    width = WIDTH / len(counts)
    bars = []
    for i, n in enumerate(counts):
        h = HEIGHT * n / top
        bars.append(
            f'<rect x="{i * width:.1f}" y="{HEIGHT - h:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="{BAR}"><title>{edges[i]:g} to {edges[i + 1]:g}: {n}</title></rect>'
        )
    low, high = f"{edges[0]:g}", f"{edges[-1]:g}"
    ticks = (
        f'<text x="0" y="{HEIGHT + 30}" font-size="11">{escape(low)}</text>'
        f'<text x="{WIDTH}" y="{HEIGHT + 30}" font-size="11" text-anchor="end">{escape(high)}</text>'
    )
    return (
        f'<svg role="img" aria-label="{escape(label)}" width="{WIDTH}" height="{HEIGHT + 36}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT + 36}">{"".join(bars)}{_axis(label)}{ticks}</svg>'
    )


def bars(items: list[tuple[str, int]], label: str) -> str:
    """Horizontal bars, one per (name, count), largest first as given."""
    if not items:
        return '<p class="none">no data</p>'
    top = max(n for _, n in items) or 1
    row = 20
    height = row * len(items)
    parts = []
    for i, (name, n) in enumerate(items):
        w = (WIDTH - 170) * n / top
        y = i * row
        parts.append(
            f'<text x="0" y="{y + 14}" font-size="12">{escape(name[:24])}</text>'
            f'<rect x="130" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{BAR}"/>'
            f'<text x="{134 + w:.1f}" y="{y + 14}" font-size="12">{n:,}</text>'
        )
    return (
        f'<svg role="img" aria-label="{escape(label)}" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">{"".join(parts)}</svg>'
    )


def scatter(points: list[tuple[str, float, float, bool]], x_label: str, y_label: str) -> str:
    """Labelled points (name, x, y, on the frontier); the frontier joined by a line. x on a
    log scale when it spans more than 10x (prices of models do)."""
    if not points:
        return '<p class="none">no data</p>'
    import math

    w, h, pad = 560, 280, 44
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    log = min(xs) > 0 and max(xs) / min(xs) > 10
    fx = (lambda v: math.log10(v)) if log else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y0, y1 = min(min(ys), 0.0), max(max(ys), 1.0)

    def at(x: float, y: float) -> tuple[float, float]:
        px = pad + (w - 2 * pad) * ((fx(x) - x0) / (x1 - x0) if x1 > x0 else 0.5)
        py = h - pad - (h - 2 * pad) * ((y - y0) / (y1 - y0) if y1 > y0 else 0.5)
        return px, py

    front = sorted((p for p in points if p[3]), key=lambda p: p[1])
    line = " ".join(f"{at(p[1], p[2])[0]:.1f},{at(p[1], p[2])[1]:.1f}" for p in front)
    parts = [f'<polyline points="{line}" fill="none" stroke="#e45756" stroke-width="1.5"/>']
    for name, x, y, on in points:
        px, py = at(x, y)
        colour = "#e45756" if on else BAR
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{colour}">'
            f"<title>{escape(name)}: {x:.4g}, {y:.3f}</title></circle>"
            f'<text x="{px + 7:.1f}" y="{py - 6:.1f}" font-size="11">{escape(name[:32])}</text>'
        )
    scale = " (log scale)" if log else ""
    axes = (
        f'<text x="{w / 2}" y="{h - 8}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}{scale}</text>"
        f'<text x="12" y="{h / 2}" font-size="11" transform="rotate(-90 12 {h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
    )
    return (
        f'<svg role="img" aria-label="{escape(y_label)} against {escape(x_label)}" '
        f'width="{w}" height="{h}" viewBox="0 0 {w} {h}">{axes}{"".join(parts)}</svg>'
    )
