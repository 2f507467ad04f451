"""Dynamics presets: which hidden state drives churn, when changes happen, the contract mix.

A :class:`Dynamics` holds the coefficients of the monthly commercial decisions
(log-odds added to each segment's base rate; see ``simulator.core._decide``) and
the few latent-process constants a driver needs to be *visible* in the data, so
one generative model produces data sets whose dominant churn driver differs. A
model and its explanations can then be checked against a known answer: on
``usage_driven`` data the usage family should carry the churn signal, on
``support_driven`` the support family, on ``outcome_driven`` the outcomes family.

Churn coefficients are signed changes of the log-odds per unit of the hidden
state: engagement ``e`` (sd about 0.65 across account-months), friction ``f`` (>= 0,
mostly near 0, about 1 after an incident), attainment ``a`` (sd about 0.4) and the
champion gap ``g`` (0, or decaying from 1). Intercept shifts keep the realised
90-day churn within about 3-15 % and expansion within 3-20 % of active accounts.

A single driver only dominates what the features can see if it lasts beyond the
label horizon and shows in its own tables, so ``support_driven`` makes friction
persist (fewer, longer incidents) and ``outcome_driven`` makes attainment persist,
decouples it from engagement, shows it more strongly in goal progress and has
most tech-touch accounts state goals.
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

    # churn log-odds = segment base + shift + coefficient x state (young: first 6 months)
    churn_shift: float = 0.0
    churn_engagement: float = -1.0
    churn_friction: float = 0.7
    churn_attainment: float = -1.2
    churn_champion_gap: float = 1.2
    churn_young: float = 0.4
    # contraction log-odds: intercept at an annual renewal / in any other month, + coefficients
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

    # hidden-state process: monthly incident probability, share of friction left a month later
    incident_rate: float = 0.06
    friction_persistence: float = 0.6
    # how engagement and attainment pull each other along, and how friction drags usage
    engagement_from_attainment: float = 0.15
    engagement_from_friction: float = 0.15
    attainment_from_engagement: float = 0.5
    # attainment: share kept each month, and pull towards the CSM's skill (+ engagement)
    attainment_persistence: float = 0.85
    attainment_pull: float = 0.15
    #: how strongly attainment speeds up measured goal progress (the outcomes tables' view)
    goal_progress_attainment: float = 0.8
    #: share of accounts without a CSM (tech touch) that state goals at onboarding
    tech_touch_goal_share: float = 0.3


#: Weak secondary churn drivers of the single-driver presets: present (real data is
#: never pure), but each well below the dominant one.
_WEAK = {
    "churn_engagement": -0.2,
    "churn_friction": 0.2,
    "churn_attainment": -0.2,
    "churn_champion_gap": 0.3,
    "churn_young": 0.1,
}

PRESETS: dict[str, Dynamics] = {
    p.name: p
    for p in (
        Dynamics(
            "default",
            "mixed churn drivers: engagement, attainment, friction, champion loss, young accounts",
        ),
        Dynamics(
            "renewal_only",
            "all contracts annual; churn, expansion and contraction only at the yearly renewal",
            annual_share=(1.0, 1.0, 1.0),
            changes_at_renewal_only=True,
            churn_shift=1.0,
            # one chance a year instead of every month
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
            "churn driven by support friction (urgent, slow, escalated tickets, low CSAT); "
            "other drivers weak",
            **_WEAK | {"churn_friction": 4.0},
            churn_shift=-0.4,
            incident_rate=0.03,
            friction_persistence=0.9,
        ),
        Dynamics(
            "outcome_driven",
            "churn driven by goal attainment: customers who miss their goals leave; "
            "other drivers weak",
            **_WEAK | {"churn_attainment": -4.0},
            churn_shift=0.3,
            engagement_from_attainment=0.03,
            attainment_from_engagement=0.1,
            attainment_persistence=0.93,
            attainment_pull=0.07,
            goal_progress_attainment=2.0,
            tech_touch_goal_share=0.9,
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
