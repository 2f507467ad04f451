"""Feature metadata: declared once beside each family's code, used everywhere else.

The snapshot suite, explanation sentences, API docs and report labels all read
these declarations; a family module exports `FEATURES` (or a function returning
them when names depend on configured windows) next to the code computing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Family(StrEnum):
    USAGE = "usage"
    SUPPORT = "support"
    SENTIMENT = "sentiment"
    OUTCOMES = "outcomes"
    COMMERCIAL = "commercial"


class Good(StrEnum):
    """Which direction of a feature is healthy."""

    HIGHER = "higher"
    LOWER = "lower"
    NEUTRAL = "neutral"


@dataclass(frozen=True)
class Feature:
    """One model input.

    `template` is a sentence for explanations, formatted with `value=` the
    account's own value (e.g. "Active users fell {value:.0%} over the last 30 days").
    `categorical` features are strings the model treats natively. `min_value` /
    `max_value` bound the values the snapshot suite accepts (None: unbounded).
    """

    name: str
    family: Family
    description: str
    unit: str
    good: Good
    template: str
    categorical: bool = False
    min_value: float | None = None
    max_value: float | None = None

    def sentence(self, value: object) -> str:
        """The reason sentence with the account's own value filled in."""
        try:
            return self.template.format(value=value)
        except (ValueError, TypeError):
            # A missing or non-numeric value: show it as text rather than fail.
            return re.sub(r"\{value[^}]*\}", str(value), self.template)


def by_name(features: list[Feature]) -> dict[str, Feature]:
    """Index features by name; duplicate names are a programming error."""
    out: dict[str, Feature] = {}
    for f in features:
        if f.name in out:
            raise ValueError(f"feature {f.name!r} declared twice")
        out[f.name] = f
    return out


def to_dict(f: Feature) -> dict:
    """JSON-ready form of a feature's metadata."""
    return {**f.__dict__, "family": f.family.value, "good": f.good.value}


def from_dict(d: dict) -> Feature:
    """Inverse of `to_dict`."""
    return Feature(**{**d, "family": Family(d["family"]), "good": Good(d["good"])})
