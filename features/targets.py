"""The prediction targets, declared once: every stage iterates over `TARGETS`.

A target names its label (`<name>_<horizon>d`), says whether its event is a risk
(churn: the health score falls as its probability rises) or an opportunity
(expansion), and names the simulator truth column its oracle compares with. The
label itself is computed by `features.labels` (one function per target); the
promotion gate is `train.gates` in params.yaml, the same for every target.
Adding a target (e.g. downsell) means one entry here and one label function.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.contract import Col


@dataclass(frozen=True)
class Target:
    """One thing the product predicts within the label horizon."""

    name: str
    description: str
    #: True when the event is bad for the customer relationship (a risk to act on)
    event_is_risk: bool
    #: the simulator truth column with this target's true probability (the oracle)
    truth_column: str
    #: monotone directions this target declares: +1 when a feature's healthy direction
    #: raises its probability, -1 when it lowers it, 0 when it declares none (then no
    #: constraints are ever used; see `train.monotone_constraints`)
    monotone_sign: int = 0

    def label(self, horizon_days: int) -> str:
        """The label column of this target at `horizon_days`, e.g. `churn_90d`."""
        return f"{self.name}_{horizon_days}d"


CHURN = Target(
    "churn",
    "No subscription covers the day after the horizon: the account has left.",
    event_is_risk=True,
    truth_column=Col.TRUE_CHURN_PROBABILITY,
    monotone_sign=-1,
)
EXPANSION = Target(
    "expansion",
    "MRR at the horizon is at least (1 + expansion_threshold) x MRR at as_of.",
    event_is_risk=False,
    truth_column=Col.TRUE_EXPANSION_PROBABILITY,
    # Renewal proximity and recent MRR change work the other way for expansion than
    # their "healthy" direction suggests: expansion declares no directions.
    monotone_sign=0,
)
#: every target, in the order stages process and print them
TARGETS: tuple[Target, ...] = (CHURN, EXPANSION)
TARGET_NAMES: tuple[str, ...] = tuple(t.name for t in TARGETS)


def target(name: str) -> Target:
    """The declared target called `name` (ValueError naming the known ones otherwise)."""
    for t in TARGETS:
        if t.name == name:
            return t
    raise ValueError(f"unknown target {name!r}: expected one of {', '.join(TARGET_NAMES)}")
