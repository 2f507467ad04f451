"""The explanation picture: a waterfall of one account's health as self-contained SVG.

From left to right: the health of an average account (`base_health`), one floating bar
per feature family (the health points the family adds or takes away, green or red),
and the account's health score coloured by its band. The vertical axis is health 0–100.

The SVG has no scripts, styles or external references (only the SVG namespace), every
text is XML-escaped, and it never fails on odd input: missing or non-finite component
values are skipped, running sums outside 0–100 are clipped when drawn, and the numbers
shown are always the true ones. Used by the API (`/accounts/{id}/explanation.svg`)
and inlined in the leadership report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

SVG_NS = "http://www.w3.org/2000/svg"
BAND_COLOURS = {"red": "#d64545", "yellow": "#e0a800", "green": "#2e9e5b"}
UP, DOWN, BASE, UNKNOWN = "#2e9e5b", "#d64545", "#8a93a6", "#888888"
DEFAULT_BASE_HEALTH = 50.0

WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 40, 12, 34, 44  # margins around the plot area
LABEL_MAX = 14  # characters of a bar label line before it is shortened
LINE_MAX = 10  # a longer label with a space goes on two lines
TICKS = (0, 25, 50, 75, 100)


@dataclass(frozen=True)
class Bar:
    """One bar: its label, the value shown, and the health range it spans."""

    label: str
    value: float | None  # None: unknown (drawn empty, shown as "–")
    low: float
    high: float
    colour: str
    signed: bool  # show the value as a change (+3.0) rather than a level (72)


def number(x: Any) -> float | None:
    """`x` as a finite float, or None (missing, NaN, infinite or not a number)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def components(item: dict[str, Any]) -> list[tuple[str, float]]:
    """The item's (family, health points) in the order given, unusable values left out."""
    raw = item.get("components")
    if not isinstance(raw, dict):
        return []
    pairs = ((str(k), number(v)) for k, v in raw.items())
    return [(k, v) for k, v in pairs if v is not None]


def bars(item: dict[str, Any], base_health: float | None) -> list[Bar]:
    """Average account, one floating bar per family, the final health: families + 2."""
    base = number(base_health)
    base = DEFAULT_BASE_HEALTH if base is None else base
    out = [Bar("average account", base, 0.0, base, BASE, signed=False)]
    running = base
    for family, points in components(item):
        end = running + points
        colour = UP if points >= 0 else DOWN
        out.append(Bar(family, points, min(running, end), max(running, end), colour, True))
        running = end
    health = number(item.get("health_score"))
    colour = BAND_COLOURS.get(str(item.get("band")), UNKNOWN)
    out.append(Bar("health", health, 0.0, health or 0.0, colour, signed=False))
    return out


def _y(v: float) -> float:
    """The vertical position of health `v`, clipped to the 0–100 axis."""
    plot_h = HEIGHT - TOP - BOTTOM
    return TOP + plot_h * (100.0 - min(max(v, 0.0), 100.0)) / 100.0


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _short(label: str) -> str:
    return label if len(label) <= LABEL_MAX else label[: LABEL_MAX - 1] + "…"


def _lines(label: str) -> list[str]:
    """A bar label on one line, or on two when it is long and has a space to break at."""
    head, _, tail = label.partition(" ")
    if len(label) <= LINE_MAX or not tail:
        return [_short(label)]
    return [_short(head), _short(tail)]


def _value_text(b: Bar) -> str:
    if b.value is None:
        return "–"
    return f"{b.value:+.1f}" if b.signed else f"{b.value:.0f}"


def _axis() -> Iterable[str]:
    right = WIDTH - RIGHT
    yield f'<line x1="{LEFT}" y1="{_y(0):.1f}" x2="{LEFT}" y2="{_y(100):.1f}" stroke="#687083"/>'
    for t in TICKS:
        y = _y(t)
        yield (
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e3e6eb"/>'
            f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end" fill="#687083">{t}</text>'
        )


def _bar(i: int, slot: float, b: Bar, next_level: float | None) -> Iterable[str]:
    """One bar with its value above, its label below and a connector to the next bar."""
    width = slot * 0.62
    x = LEFT + slot * i + (slot - width) / 2
    top, bottom = _y(b.high), _y(b.low)
    cx = x + width / 2
    yield (
        f'<rect class="bar" data-label="{_e(b.label)}" data-value="{_e(_value_text(b))}" '
        f'x="{x:.2f}" y="{top:.2f}" width="{width:.2f}" height="{bottom - top:.2f}" '
        f'fill="{b.colour}"><title>{_e(b.label)}: {_e(_value_text(b))}</title></rect>'
    )
    yield (
        f'<text x="{cx:.2f}" y="{top - 4:.2f}" text-anchor="middle" font-weight="600">'
        f"{_e(_value_text(b))}</text>"
        f'<text x="{cx:.2f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
        + "".join(
            f'<tspan x="{cx:.2f}" dy="{0 if n == 0 else 13}">{_e(line)}</tspan>'
            for n, line in enumerate(_lines(b.label))
        )
        + "</text>"
    )
    if next_level is not None:
        y = _y(next_level)
        yield (
            f'<line x1="{x + width:.2f}" y1="{y:.2f}" x2="{x + slot:.2f}" y2="{y:.2f}" '
            'stroke="#687083" stroke-dasharray="3,2"/>'
        )


def _level_after(b: Bar) -> float:
    """The running health after a bar (where the next floating bar starts)."""
    if b.signed and b.value is not None and b.value < 0:
        return b.low
    return b.high


def default_title(item: dict[str, Any], base_health: float | None) -> str:
    """The default title, e.g. "Health of ACC-1: 52 for an average account → 43"."""
    base = number(base_health)
    health = number(item.get("health_score"))
    b = "–" if base is None else f"{base:.0f}"
    h = "–" if health is None else f"{health:.0f}"
    return f"Health of {item.get('account_id', 'account')}: {b} for an average account → {h}"


def waterfall_svg(item: dict[str, Any], base_health: float, title: str | None = None) -> str:
    """The account's health waterfall (baseline → family components → score) as SVG."""
    title = default_title(item, base_health) if title is None else str(title)
    all_bars = bars(item, base_health)
    slot = (WIDTH - LEFT - RIGHT) / len(all_bars)
    desc = "; ".join(f"{b.label} {_value_text(b)}" for b in all_bars)
    parts = [
        f'<svg xmlns="{SVG_NS}" class="waterfall" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" font-family="Helvetica,Arial,sans-serif" '
        f'font-size="11" fill="#1d2330">',
        f"<title>{_e(title)}</title><desc>{_e(desc)}</desc>",
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="600">{_e(title)}</text>',
        *_axis(),
    ]
    for i, b in enumerate(all_bars):
        nxt = _level_after(b) if i < len(all_bars) - 2 else None
        parts.extend(_bar(i, slot, b, nxt))
    parts.append("</svg>")
    return "".join(parts)
