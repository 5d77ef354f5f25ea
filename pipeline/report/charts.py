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
