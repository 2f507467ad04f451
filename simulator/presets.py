"""Dynamics presets: which latent drives churn, expansion and contraction, and the contract mix.

A :class:`Dynamics` holds the coefficients of the monthly commercial decisions
(log-odds added to each segment's base rate; see ``simulator.core._decide``), so
one generative model can produce data sets whose dominant churn driver differs.
A model and its explanations can then be checked against a known answer: on
``usage_driven`` data the usage family should carry the churn signal, on
``outcome_driven`` data the outcomes family, and so on.

Coefficients are signed changes of the log-odds per unit of the latent state:
engagement ``e`` (sd about 0.6 across account-months), friction ``f`` (>= 0,
mostly near 0.1, up to about 1.5 after an incident), attainment ``a`` (sd about
0.35) and the champion gap ``g`` (0 or decaying from 1). Intercept shifts keep the
realised 90-day churn within about 3-15 % and expansion within 3-20 % of active
accounts for every preset.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dynamics:
    """Coefficients of the churn, contraction and expansion decisions, and the contract mix."""

    name: str
    description: str
    #: months of history when none is asked for (None: the caller's default)
    months: int | None = None
    #: share of annual contracts per segment (smb, mid_market, enterprise); None: segment profile
    annual_share: tuple[float, float, float] | None = None
    #: expansion and contraction only when a term renews (churn always waits for a term end)
    changes_at_renewal_only: bool = False
    # latent process: monthly incident probability, share of friction left after a month,
    # and how much engagement and attainment pull each other along (and friction drags usage)
    incident_rate: float = 0.06
    friction_persistence: float = 0.6
    engagement_from_attainment: float = 0.15
    engagement_from_friction: float = 0.15
    attainment_from_engagement: float = 0.5
    # churn log-odds = segment base + shift + coefficient x state
    churn_shift: float = 0.0
    churn_engagement: float = -1.0
    churn_friction: float = 0.7
    churn_attainment: float = -1.2
    churn_champion_gap: float = 1.2
    churn_young: float = 0.4
    # contraction log-odds: intercept at an annual renewal / any other month, + coefficients
    contraction_at_renewal: float = -2.6
    contraction_otherwise: float = -6.0
    contraction_engagement: float = -1.0
    contraction_friction: float = 0.5
    contraction_attainment: float = -0.5
    # expansion log-odds = segment base + shift + coefficients
    expansion_shift: float = 0.0
    expansion_engagement: float = 0.9
    expansion_attainment: float = 1.0
    expansion_friction: float = -0.4
    #: share of expansions that are a plan upgrade (else added seats)
    upgrade_share: float = 0.25


#: Weak secondary churn drivers of the single-driver presets: present (real data is
#: never pure), but each well below the dominant one.
_WEAK = {
    "churn_engagement": -0.2,
    "churn_friction": 0.2,
    "churn_attainment": -0.2,
    "churn_champion_gap": 0.3,
    "churn_young": 0.1,
}

_DEFAULT = Dynamics(
    "default",
    "mixed drivers: engagement, attainment, friction, champion loss, young accounts",
)

PRESETS: dict[str, Dynamics] = {
    p.name: p
    for p in (
        _DEFAULT,
        Dynamics(
            "renewal_only",
            "all contracts annual; churn, expansion and contraction only at the yearly renewal",
            annual_share=(1.0, 1.0, 1.0),
            changes_at_renewal_only=True,
            churn_shift=0.6,
            expansion_shift=3.6,
        ),
        Dynamics(
            "usage_driven",
            "churn driven by engagement (what usage shows); other drivers weak",
            **_WEAK | {"churn_engagement": -2.6},
            churn_shift=0.6,
        ),
        Dynamics(
            "support_driven",
            "churn driven by support friction (urgent tickets, low CSAT); other drivers weak",
            **_WEAK | {"churn_friction": 3.5},
            churn_shift=-0.1,
        ),
        Dynamics(
            "outcome_driven",
            "churn driven by goal attainment (missed goals); other drivers weak",
            **_WEAK | {"churn_attainment": -4.0},
            churn_shift=0.3,
        ),
        Dynamics("short_12", "default dynamics, 12 months of history", months=12),
        Dynamics("short_15", "default dynamics, 15 months of history", months=15),
    )
}


def preset_names() -> tuple[str, ...]:
    """The preset names, `default` first."""
    return tuple(PRESETS)


def get_preset(name: str) -> Dynamics:
    """The preset called `name`; a ValueError lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown simulator preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
