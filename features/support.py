"""Support family: ticket volume, backlog, severity, resolution speed and CSAT."""

from __future__ import annotations

import pandas as pd

from features.calendar import days_between, per_snapshot, records_before
from features.contract import Col, Priority
from features.meta import Family, Feature, Good, last_days
from features.settings import Windows

_SEVERE = (Priority.HIGH.value, Priority.URGENT.value)


def support_features_meta(w: Windows) -> list[Feature]:
    """The support features for the configured windows."""
    m, lg = w.medium, w.long
    lm, ll = last_days(m), last_days(lg)
    s = Family.SUPPORT
    return [
        Feature(f"tickets_{m}d", s, f"Tickets opened in the last {m} days.", "tickets",
                Good.NEUTRAL, f"{{amount}} opened in {lm}", min_value=0,
                label=f"tickets opened in {lm}", noun="support ticket"),
        Feature(f"tickets_{lg}d", s, f"Tickets opened in the last {lg} days.", "tickets",
                Good.NEUTRAL, f"{{amount}} opened in {ll}", min_value=0,
                label=f"tickets opened in {ll}", noun="support ticket"),
        Feature("open_tickets", s, "Tickets open at as_of (any age).", "tickets", Good.LOWER,
                "{amount} still open", min_value=0, label="open tickets", noun="support ticket"),
        Feature(f"severe_ticket_share_{lg}d", s,
                f"Share of high/urgent tickets among those opened in the last {lg} days.",
                "ratio", Good.LOWER, f"{{value}} of tickets opened in {ll} were high or urgent",
                min_value=0, max_value=1, label=f"share of high or urgent tickets in {ll}"),
        Feature(f"median_resolution_hours_{lg}d", s,
                f"Median hours to resolve tickets opened in the last {lg} days.", "hours",
                Good.LOWER, f"Tickets opened in {ll} took a median {{amount}} to resolve",
                min_value=0, label=f"median hours to resolve a ticket in {ll}", noun="hour"),
        Feature(f"escalations_{lg}d", s, f"Escalated tickets opened in the last {lg} days.",
                "tickets", Good.LOWER, f"{{amount}} in {ll}", min_value=0,
                label=f"escalated tickets in {ll}", noun="escalated ticket"),
        Feature(f"csat_mean_{lg}d", s, f"Mean CSAT of tickets opened in the last {lg} days.",
                "score 1-5", Good.HIGHER, f"CSAT averages {{value}} over {ll}",
                min_value=1, max_value=5, label=f"mean CSAT over {ll}", decimals=1),
        Feature(f"tickets_per_seat_{lg}d", s, f"Tickets in the last {lg} days per seat.",
                "tickets/seat", Good.NEUTRAL, f"{{amount}} in {ll}", min_value=0,
                label=f"tickets per seat in {ll}", noun="ticket per seat",
                plural="tickets per seat", decimals=2),
        Feature("days_since_last_ticket", s, "Days since the last ticket was opened.", "days",
                Good.NEUTRAL, "Last support ticket opened {amount} ago", min_value=0,
                label="days since the last ticket", noun="day"),
    ]  # fmt: skip


def support_features(
    grid: pd.DataFrame, tickets: pd.DataFrame, seats: pd.Series, w: Windows
) -> pd.DataFrame:
    """Support features per grid row; `seats` (aligned with grid) scales the volume."""
    m, lg = w.medium, w.long
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    past = records_before(grid, tickets, Col.CREATED_AT)
    age = days_between(past[Col.AS_OF], past[Col.CREATED_AT])
    recent = past[age <= lg]
    resolved_before = recent[Col.RESOLVED_AT] < recent[Col.AS_OF]
    hours = days_between(recent[Col.RESOLVED_AT], recent[Col.CREATED_AT]) * 24
    frame = pd.DataFrame(
        {
            "m": (age <= m).astype(int),
            "open": (
                past[Col.RESOLVED_AT].isna() | (past[Col.RESOLVED_AT] >= past[Col.AS_OF])
            ).astype(int),
            "age": age,
        }
    ).join(past[keys])
    g = frame.groupby(keys)
    rec = recent.assign(
        severe=recent[Col.PRIORITY].isin(_SEVERE).astype(float),
        hours=hours.where(resolved_before),
        esc=recent[Col.ESCALATED].astype(float),
        csat=recent[Col.CSAT].astype("float64").where(resolved_before),
    ).groupby(keys)
    agg = pd.DataFrame(
        {
            f"tickets_{m}d": g["m"].sum(),
            f"tickets_{lg}d": rec.size(),
            "open_tickets": g["open"].sum(),
            f"severe_ticket_share_{lg}d": rec["severe"].mean(),
            f"median_resolution_hours_{lg}d": rec["hours"].median(),
            f"escalations_{lg}d": rec["esc"].sum(),
            f"csat_mean_{lg}d": rec["csat"].mean(),
            "days_since_last_ticket": g["age"].min(),
        }
    )
    out = per_snapshot(grid, agg).set_index(grid.index)
    for col in (f"tickets_{m}d", f"tickets_{lg}d", "open_tickets", f"escalations_{lg}d"):
        out[col] = out[col].fillna(0)
    out[f"tickets_per_seat_{lg}d"] = out[f"tickets_{lg}d"] / seats.where(seats > 0)
    return out[[f.name for f in support_features_meta(w)]].astype("float64")
