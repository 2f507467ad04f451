"""Feature metadata: declared once beside each family's code, used everywhere else.

The snapshot suite, explanation sentences, API docs and report labels all read
these declarations; a family module exports `FEATURES` (or a function returning
them when names depend on configured windows) next to the code computing them.

Sentences are driven by the metadata, never by per-feature code: `unit` says how a
value is written ("ratio" as a percent, "USD/..." as money, "score a-b" as "x / b",
"flag" as yes/no, "category" humanised, anything else as a number with `decimals`),
`noun`/`plural` name what a count counts, and `template` places the words:

- `{value}`: the value with its unit ("45%", "$1,200", "3.5 / 10", "12");
- `{amount}`: the value with its noun ("1 user", "12 users"; "3 of 40 seats" for a
  `per_seat` count when the seat count is known);
- `{trend}`: "rose 12%", "fell 40%" or "held steady" (marks the feature a trend,
  whose values are shown signed: "+12%");
- `{a|b}`: `a` when the value shows as 1 (a flag: when set), else `b` ("{is|are}").

Older artifacts' templates (`{value:.0f}`) still render: the format spec is ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
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


class Role(StrEnum):
    """Whether a CSM can act on a feature or it only describes the account."""

    ACTIONABLE = "actionable"
    CONTEXT = "context"


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PROPER = {"smb": "SMB", "mid_market": "mid-market", "emea": "EMEA", "apac": "APAC",
           "latam": "LATAM", "north_america": "North America"}  # fmt: skip
_MISSING_TEXT = {"", "nan", "none", "<na>", "nat"}
_LIMIT = 1e300  # values are clamped here so that scaling never overflows to inf


def humanise(text: str) -> str:
    """A category code in words: "mid_market" -> "mid-market", "smb" -> "SMB", "a_b" -> "a b"."""
    text = str(text)
    return _PROPER.get(text.strip().lower()) or " ".join(text.replace("_", " ").split())


def last_days(n: int) -> str:
    """A window in words: "the last day", "the last 30 days"."""
    return "the last day" if n == 1 else f"the last {n:,} days"


def _number(x: float, decimals: int = 0) -> str:
    """`x` with thousands separators, no scientific notation and never "-0"."""
    text = f"{x:,.{decimals}f}"
    return text if text.strip("-0.,") else text.lstrip("-")


def _is_zero(text: str) -> bool:
    """Whether a number text shows zero ("0", "0.0", "0%")."""
    return not text.strip("-+0.,%")


def _finite(value: object) -> float | None:
    """`value` as a finite float (clamped to ±1e300), or None when missing or not a number."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(x, -_LIMIT), _LIMIT) if math.isfinite(x) else None


def _category(value: object) -> str | None:
    """A category value humanised, or None when missing or blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = humanise(str(value))
    return None if text.lower() in _MISSING_TEXT else text


def _cap(text: str) -> str:
    """`text` with its first letter upper-cased."""
    return text[:1].upper() + text[1:]


def _uncap(text: str) -> str:
    """`text` with its first letter lower-cased, unless it starts an acronym ("NPS")."""
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


@dataclass(frozen=True)
class Feature:
    """One model input and how to talk about it (see the module docstring).

    `categorical` features are strings the model treats natively. `min_value` /
    `max_value` bound the values the snapshot suite accepts (None: unbounded); a
    score's `max_value` is its scale ("3.5 / 5"). `role` says whether a CSM can act
    on it; `label` is a short lower-case noun phrase for change sentences;
    `per_seat` marks a user count read against the licensed seats.
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
    role: Role = Role.ACTIONABLE
    label: str = ""
    per_seat: bool = False
    noun: str = ""
    plural: str = ""
    decimals: int = 0

    @property
    def short(self) -> str:
        """The label, else the description without its final period, first letter lower-cased."""
        return self.label or _uncap(self.description.strip().rstrip("."))

    @property
    def kind(self) -> str:
        """How values are written: category, flag, percent, money, score or number."""
        unit = self.unit.strip().lower()
        if self.categorical or unit == "category":
            return "category"
        if unit in ("flag", "ratio"):
            return "percent" if unit == "ratio" else "flag"
        if unit.startswith("usd"):
            return "money"
        return "score" if unit.startswith("score") and self.max_value is not None else "number"

    @property
    def is_trend(self) -> bool:
        """Whether the feature is a change (its template says "rose"/"fell"/"held steady")."""
        return "{trend}" in self.template

    def _digits(self, x: float) -> str:
        """The number part of `x` as shown (a ratio in percent points)."""
        return _number(x * 100 if self.kind == "percent" else x, self.decimals)

    def _plain(self, x: float) -> str:
        """`x` with its unit, unsigned unless negative."""
        kind, digits = self.kind, self._digits(x)
        if kind == "flag":
            return "yes" if x >= 0.5 else "no"
        if kind == "money":
            return ("-" if digits.startswith("-") else "") + "$" + digits.lstrip("-")
        if kind == "score":
            return f"{digits} / {_number(self.max_value or 0)}"
        return digits + ("%" if kind == "percent" else "")

    def _is_one(self, x: float) -> bool:
        """Whether `x` shows as one (singular noun), or for a flag whether it is set."""
        return x >= 0.5 if self.kind == "flag" else self._digits(abs(x)) == "1"

    def _nouned(self, text: str, x: float, seats: float | None, peer: bool = False) -> str:
        """`text` (showing `x`) with its noun, or "x of N seats" for a per-seat count."""
        n = _finite(seats)
        if self.per_seat and n is not None and n > 0:
            of = f"{text} of {_number(n)}"
            return of if peer else f"{of} {'seat' if _number(n) == '1' else 'seats'}"
        if not self.noun:
            return text
        return f"{text} {self.noun if self._is_one(x) else self.plural or self.noun + 's'}"

    def _trend(self, x: float) -> str:
        """"rose 12%", "fell 40%" or "held steady"."""
        if _is_zero(self._digits(x)):
            return "held steady"
        return f"{'rose' if x > 0 else 'fell'} {self._nouned(self._plain(abs(x)), abs(x), None)}"

    def format_value(self, value: object) -> str:
        """The value with its unit in words ("45%", "$1,200", "3.5 / 10", "yes"), or "no data"."""
        if self.kind == "category":
            return _category(value) or "no data"
        x = _finite(value)
        if x is None:
            return "no data"
        text = self._plain(x)
        return "+" + text if self.is_trend and x > 0 and not _is_zero(text) else text

    def _render(self, value: object, seats: float | None) -> str | None:
        """The template filled in for `value`, or None when the value is missing."""
        x = None if self.kind == "category" else _finite(value)
        text = self.format_value(value)
        if x is None and (self.kind != "category" or _category(value) is None):
            return None

        def fill(m: re.Match[str]) -> str:
            key = m.group(1)
            if "|" in key:
                one, _, other = key.partition("|")
                return one if x is not None and self._is_one(x) else other
            if key == "amount":
                return text if x is None else self._nouned(text, x, seats)
            if key == "trend":
                return text if x is None else self._trend(x)
            return text if key.startswith("value") else ""

        return " ".join(_PLACEHOLDER.sub(fill, self.template).split())

    def sentence(self, value: object, seats: float | None = None) -> str:
        """The account's own value in a sentence ("12 users active in the last 30 days")."""
        text = self._render(value, seats)
        return _cap(text) if text else _cap(f"no data on {self.short}")

    def peer_text(self, peer_value: object, group: str, seats: float | None = None) -> str:
        """A peer group's value, e.g. "healthy mid-market accounts: 28 of 40"."""
        x = _finite(peer_value)
        if self.kind == "flag" and x is not None:
            body = _uncap(self._render(x, None) or "")
        elif self.kind == "category" or x is None:
            body = self.format_value(peer_value)
        else:
            body = self._nouned(self.format_value(x), x, seats, peer=True)
        return f"{group}: {body}" if group else body

    def _verb(self, before: float | None, after: float | None) -> str:
        """"rose"/"fell" for numbers, "moved" for scores, "changed" for categories and flags."""
        if self.kind in ("category", "flag") or before is None or after is None:
            return "changed"
        if self.kind == "score" or after == before:
            return "moved" if self.kind == "score" else "changed"
        return "rose" if after > before else "fell"

    def _shown(self, value: object, seats: float | None, with_seats: bool) -> str | None:
        """`value` as a change sentence shows it, or None when missing."""
        x = _finite(value)
        if (_category(value) if self.kind == "category" else x) is None:
            return None
        text = self.format_value(value)
        return self._nouned(text, x, seats) if with_seats and x is not None else text

    def change_sentence(
        self, before: object, after: object,
        seats_before: float | None = None, seats_after: float | None = None,
    ) -> str:  # fmt: skip
        """How the value changed, e.g. "active users in the last 30 days fell from 31 to 12"."""
        sb, sa = _finite(seats_before), _finite(seats_after)
        both = self.per_seat and sb is not None and sa is not None and min(sb, sa) > 0
        same = both and _number(sb or 0) == _number(sa or 0)
        a = self._shown(before, sb, both and not same)
        b = self._shown(after, sa, both)
        if a is None and b is None:
            return f"{self.short}: no data"
        if a is None or b is None:
            return f"{self.short}: " + (f"no data before, now {b}" if a is None else
                                        f"{a} before, no data now")  # fmt: skip
        if a == b:
            return f"{self.short} stayed at {a}"
        return f"{self.short} {self._verb(_finite(before), _finite(after))} from {a} to {b}"


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
    return {**f.__dict__, "family": f.family.value, "good": f.good.value, "role": f.role.value}


def from_dict(d: dict) -> Feature:
    """Inverse of `to_dict`; keys it does not know are ignored, missing new ones defaulted."""
    known = {f.name for f in fields(Feature)}
    kw = {k: v for k, v in d.items() if k in known}
    kw.update(family=Family(d["family"]), good=Good(d["good"]))
    # Metadata written before roles existed: every commercial feature is context.
    default = Role.CONTEXT if kw["family"] == Family.COMMERCIAL else Role.ACTIONABLE
    return Feature(**{**kw, "role": Role(d.get("role", default))})
