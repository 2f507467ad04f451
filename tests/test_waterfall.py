"""The explanation waterfall: well-formed, self-contained SVG whose bars match the numbers."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from serving.waterfall import BAND_COLOURS, DOWN, HEIGHT, SVG_NS, TOP, UP, waterfall_svg

NS = {"s": SVG_NS}
BOTTOM_Y = HEIGHT - 44  # the y of health 0 (the plot's bottom margin is 44)
PLOT_H = BOTTOM_Y - TOP


def _item(**kw: object) -> dict:
    item = {
        "account_id": "ACC-1",
        "health_score": 40.0,
        "band": "red",
        "components": {"usage": -12.5, "support": -4.0, "outcomes": 6.5},
    }
    return {**item, **kw}


def _bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [r for r in root.iter(f"{{{SVG_NS}}}rect") if r.get("class") == "bar"]


def _health_at(y: float) -> float:
    """The health a vertical position stands for."""
    return 100.0 * (BOTTOM_Y - y) / PLOT_H


def _span(rect: ET.Element) -> tuple[float, float]:
    """(low, high) health of a bar."""
    y, h = float(rect.get("y")), float(rect.get("height"))
    return _health_at(y + h), _health_at(y)


def test_well_formed_with_one_bar_per_family_plus_two() -> None:
    svg = waterfall_svg(_item(), 50.0)
    root = ET.fromstring(svg)
    assert root.tag == f"{{{SVG_NS}}}svg"
    assert root.get("viewBox") and root.get("width") and root.get("height")
    assert root.find("s:title", NS) is not None and "ACC-1" in root.find("s:title", NS).text
    bars = _bars(svg)
    assert len(bars) == 3 + 2
    assert [b.get("data-label") for b in bars] == [
        "average account", "usage", "support", "outcomes", "health"
    ]  # fmt: skip
    texts = " ".join("".join(t.itertext()) for t in root.iter(f"{{{SVG_NS}}}text"))
    assert "-12.5" in texts and "+6.5" in texts and "usage" in texts


def test_bars_match_the_numbers() -> None:
    bars = _bars(waterfall_svg(_item(), 50.0))
    assert _span(bars[0]) == pytest.approx((0.0, 50.0), abs=0.05)
    assert _span(bars[1]) == pytest.approx((37.5, 50.0), abs=0.05)  # usage: 50 → 37.5
    assert _span(bars[2]) == pytest.approx((33.5, 37.5), abs=0.05)  # support: → 33.5
    assert _span(bars[3]) == pytest.approx((33.5, 40.0), abs=0.05)  # outcomes: → 40
    assert _span(bars[4]) == pytest.approx((0.0, 40.0), abs=0.05)  # the final bar's top
    assert [b.get("fill") for b in bars[1:4]] == [DOWN, DOWN, UP]
    assert bars[4].get("fill") == BAND_COLOURS["red"]
    assert _bars(waterfall_svg(_item(band="green"), 50.0))[4].get("fill") == BAND_COLOURS["green"]
    # Bars march left to right.
    xs = [float(b.get("x")) for b in bars]
    assert xs == sorted(xs)


def test_empty_components_give_baseline_and_health_only() -> None:
    for comps in ({}, None, "nonsense"):
        bars = _bars(waterfall_svg(_item(components=comps), 61.2))
        assert [b.get("data-label") for b in bars] == ["average account", "health"]


def test_missing_and_non_finite_values_are_skipped() -> None:
    comps = {"usage": float("nan"), "support": None, "sentiment": float("inf"), "outcomes": 3.0}
    svg = waterfall_svg(_item(components=comps, health_score=float("nan")), float("nan"))
    bars = _bars(svg)
    assert [b.get("data-label") for b in bars] == ["average account", "outcomes", "health"]
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert _span(bars[0])[1] == pytest.approx(50.0, abs=0.05)  # no baseline: 50
    assert bars[-1].get("data-value") == "–" and float(bars[-1].get("height")) == 0.0
    for b in bars:
        assert math.isfinite(float(b.get("y"))) and float(b.get("height")) >= 0


def test_running_sums_outside_the_axis_are_clipped() -> None:
    item = _item(components={"usage": 80.0, "support": -170.0, "outcomes": 95.0}, health_score=55.0)
    bars = _bars(waterfall_svg(item, 50.0))
    for b in bars:
        low, high = _span(b)
        assert -0.05 <= low <= high <= 100.05
    assert _span(bars[1]) == pytest.approx((50.0, 100.0), abs=0.05)  # 50 → 130, clipped
    assert _span(bars[2]) == pytest.approx((0.0, 100.0), abs=0.05)  # 130 → −40
    assert bars[1].get("data-value") == "+80.0"  # the true number is still shown


def test_hostile_text_is_escaped() -> None:
    evil = "<script>alert('x')</script> & \"quoted\""
    item = _item(account_id=evil, components={evil: -3.0}, band=evil)
    svg = waterfall_svg(item, 50.0)
    root = ET.fromstring(svg)  # still well-formed
    assert "<script" not in svg.lower()
    assert root.find("s:title", NS).text.startswith(f"Health of {evil}")
    assert _bars(svg)[1].get("data-label") == evil
    svg = waterfall_svg(_item(), 50.0, title=evil)
    assert "<script" not in svg.lower() and ET.fromstring(svg).find("s:title", NS).text == evil


def test_self_contained() -> None:
    svg = waterfall_svg(_item(), 50.0)
    assert re.findall(r"https?://[^\"' ]+", svg) == [SVG_NS]
    assert not re.search(r"href|<script|<image|<style|url\(", svg, flags=re.I)
