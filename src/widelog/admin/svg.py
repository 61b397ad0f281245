"""Line charts as inline SVG strings: the dashboard loads no script, font or stylesheet.

A chart library would be a dependency (or a CDN) for five small charts; these are a polyline per
series, two axis labels per axis and a legend. Every text is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

WIDTH, HEIGHT = 460, 170
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 26, 20  # margins around the plot area


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y); a missing value is simply left out
    color: str  # a CSS color: chosen by the caller, never from input


def number(value: float) -> str:
    """A short axis label: 0, 0.25, 3.5, 42, 1,250."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    unit: str = "",
    y_max: float | None = None,
    x_label: Callable[[float], str] = number,
    area: bool = False,
) -> str:
    """One chart; y starts at 0 and ends at `y_max` (default: the largest value).

    No points at all: the frame and "no data yet". One point: a dot (a path needs two).
    """
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<text x="4" y="14" class="title">{escape(title)}</text>'
        + _legend(series)
        + f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}"'
        f' height="{HEIGHT - TOP - BOTTOM}" class="frame"/>'
    )
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        empty = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2 + 6}" class="empty">no data yet</text>'
        return head + empty + "</svg>"
    x0, x1 = min(xs), max(xs)
    top = y_max if y_max is not None else max(ys)
    top = top if top > 0 else 1.0

    def at(x: float, y: float) -> str:
        px = LEFT + (WIDTH - LEFT - RIGHT) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)
        py = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * min(y, top) / top
        return f"{px:.1f},{py:.1f}"

    body = [
        f'<text x="{LEFT - 4}" y="{TOP + 8}" class="y">{escape(number(top) + unit)}</text>',
        f'<text x="{LEFT - 4}" y="{HEIGHT - BOTTOM}" class="y">0{escape(unit)}</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 4}" class="x">{escape(x_label(x0))}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" class="x end">{escape(x_label(x1))}</text>',
    ]
    for line in series:
        points = [at(x, y) for x, y in sorted(line.points)]
        if len(points) == 1:
            x, y = points[0].split(",")
            body.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{line.color}"/>')
        elif points:
            path = "M" + " L".join(points)
            if area:
                floor = HEIGHT - BOTTOM
                first, last = points[0].split(",")[0], points[-1].split(",")[0]
                body.append(
                    f'<path d="{path} L{last},{floor} L{first},{floor} Z"'
                    f' fill="{line.color}" fill-opacity="0.15" stroke="none"/>'
                )
            body.append(f'<path d="{path}" fill="none" stroke="{line.color}" stroke-width="1.5"/>')
    return head + "".join(body) + "</svg>"


def _legend(series: Sequence[Series]) -> str:
    if len(series) < 2:
        return ""
    items = "".join(f'<tspan fill="{s.color}">■ {escape(s.name)}</tspan> ' for s in series)
    return f'<text x="{WIDTH - RIGHT}" y="14" class="legend">{items}</text>'
