"""The generative model of the sample-data simulator (Customer Success data with ground truth).

Generative model
----------------
Each account carries a hidden monthly state; every table we write is a noisy,
partial view of it, so no single column gives the answer.

* Latent state per account and month ``m`` (all centred near 0):
  - ``engagement`` e: AR(1) around the account's own baseline; pulled up by
    value realised, pushed down while a champion gap lasts.
  - ``friction`` f >= 0: product/support pain; decays, jumps on incidents.
  - ``attainment`` a: how well the customer is reaching the goals it bought the
    product for; drifts with engagement and with its CSM's skill, falls with friction.
  - ``champion gap`` g: set to 1 when the internal champion leaves (about 1.2 %
    a month), decaying by 40 % a month.
* Commercial state: seats, plan (price per seat), contract type (monthly or
  annual; SMB mostly monthly, enterprise annual) and the month its term ends.
* Each month: the state moves, the month's observations are drawn from it, and at
  the month's end the commercial decisions are taken:
  - **churn** only at a term end (every month for monthly contracts, on the
    anniversary for annual ones), with log-odds rising with low engagement, low
    attainment, friction, a champion gap and a young account, and a segment- and
    contract-specific base rate;
  - **expansion** (seats +10–60 % or a plan upgrade) any month, more likely when
    engaged, attaining and in mid-market/enterprise; **contraction** mostly at
    annual renewals of disengaged accounts. A change starts a new subscription row.
  - The coefficients (and the contract mix) come from a :class:`~simulator.presets.Dynamics`
    preset; the numbers above are the ``default`` one.
* Observations:
  - ``usage_events``: active users ~ Binomial(seats, utilisation(e, g)); events per
    active user ~ Poisson; heavy users dominate; key features (workflows,
    integrations, API) take a larger share when engaged and attaining; users
    turn over slowly, and a new cohort appears when the champion leaves.
  - ``support_tickets``: two sources. Engaged accounts file how-to and feature
    requests (low priority, quick); friction files bugs, performance and outage
    tickets (high/urgent, slow, escalated, low CSAT). So many tickets is not
    always bad.
  - ``nps_responses``: a quarterly survey; disengaged accounts answer less (their
    silence is a signal); scores follow sentiment = f(e, a, f, g) plus noise.
  - ``outcomes`` / ``outcome_measurements``: goals set at onboarding and renewed
    when due (more for enterprise, fewer for tech-touch SMB); their true progress
    grows with attainment; measurements are noisy and taken less often by
    disengaged customers.
* Ground truth: for each account active at a month start ``as_of``, the true
  probability of churn and of expansion within the horizon is estimated by Monte
  Carlo from the state at ``as_of`` with the very same step function
  (``truth_samples`` paths), using the same calendar rules as the labels.
* Subscription ``end_date``: the last day of service (``inclusive``) or the first
  day without service, i.e. the next term's start (``exclusive``); the truth does
  not depend on how end dates are written.

Everything is vectorised over accounts (and Monte Carlo paths); only the month
loop is in Python, so 2,000 accounts × 24 months (> 10 M events) take seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

from features.contract import TABLES, TRUTH, Col, Direction, Priority, Segment, T
from features.labels import is_expansion
from features.settings import FeatureParams
from simulator.presets import Dynamics, get_preset

log = logging.getLogger(__name__)

EndDateConvention = Literal["inclusive", "exclusive"]
END_DATE_CONVENTIONS: tuple[str, ...] = get_args(EndDateConvention)
# Label defaults live with the feature pipeline; the CLI passes the configured values.
_LABEL_DEFAULTS = FeatureParams()
_US_PER_DAY = 86_400 * 1_000_000
_SEGMENTS = (Segment.SMB, Segment.MID_MARKET, Segment.ENTERPRISE)
_PLANS = ("starter", "professional", "enterprise")
_PLAN_PRICE = np.array([25.0, 45.0, 70.0])
_INDUSTRIES = (
    "software", "financial_services", "healthcare", "retail", "manufacturing",
    "education", "media", "logistics",
)  # fmt: skip
_REGIONS = ("north_america", "emea", "apac", "latam")
_REGION_P = (0.45, 0.32, 0.15, 0.08)
_EVENT_TYPES = (
    "login", "dashboard_view", "report_created", "export", "invite_user",
    "workflow_run", "integration_sync", "api_call",
)  # fmt: skip
_EVENT_BASE_W = np.array([0.30, 0.25, 0.12, 0.06, 0.02, 0.10, 0.08, 0.07])
_KEY_FEATURE = np.array([0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
_API_CALL = _EVENT_TYPES.index("api_call")
_ENGAGED_CATEGORIES = ("how_to", "feature_request", "integration")
_ENGAGED_CAT_P = (0.5, 0.35, 0.15)
_FRICTION_CATEGORIES = ("bug", "performance", "integration", "outage", "billing")
_FRICTION_CAT_P = (0.5, 0.17, 0.15, 0.06, 0.12)
_PRIORITIES = tuple(p.value for p in Priority)
_KPIS = (
    # name, baseline low, high, relative change wanted, direction
    ("ticket_handle_time_min", 20.0, 60.0, 0.15, Direction.DECREASE),
    ("weekly_reports_published", 10.0, 200.0, 0.30, Direction.INCREASE),
    ("pipeline_conversion_pct", 8.0, 30.0, 0.20, Direction.INCREASE),
    ("onboarding_days", 15.0, 45.0, 0.25, Direction.DECREASE),
    ("automated_workflows", 5.0, 40.0, 0.50, Direction.INCREASE),
    ("manual_hours_per_week", 20.0, 120.0, 0.30, Direction.DECREASE),
    ("forecast_accuracy_pct", 55.0, 80.0, 0.10, Direction.INCREASE),
)
_COMMENTS = {
    "detractor": (
        "Too many bugs lately.", "We are not seeing the value we expected.",
        "Support takes too long to respond.", "Hard to get the team to use it.",
        "Our main contact left and nobody owns this now.", "Too expensive for what we use.",
    ),
    "passive": (
        "Does the job.", "Good, but reporting could be better.",
        "Onboarding was slow.", "Fine for now.", "Missing a few integrations we need.",
    ),
    "promoter": (
        "Our team relies on it every day.", "Great support and great product.",
        "Automations saved us hours every week.", "We hit our goals ahead of plan.",
        "Easy to roll out to new teams.",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class SegmentProfile:
    """How a segment behaves: size, contracts, churn base rates, touch model."""

    share: float
    seats_median: float
    seats_sigma: float
    annual_share: float
    plan_p: tuple[float, float, float]
    discount: float
    engagement_mu: float
    churn_logit_monthly: float
    churn_logit_annual: float
    expansion_logit: float
    events_per_user: float
    ticket_scale: float
    goals_mean: float
    accounts_per_csm: int | None
    csm_coverage: float


PROFILES: dict[Segment, SegmentProfile] = {
    Segment.SMB: SegmentProfile(
        0.58, 7, 0.6, 0.20, (0.65, 0.33, 0.02), 1.00, -0.10,
        -4.05, -2.25, -3.35, 12.0, 0.55, 1.0, 80, 0.35,
    ),
    Segment.MID_MARKET: SegmentProfile(
        0.30, 40, 0.6, 0.70, (0.25, 0.60, 0.15), 0.92, 0.05,
        -4.15, -2.45, -2.95, 9.5, 0.45, 1.8, 35, 1.0,
    ),
    Segment.ENTERPRISE: SegmentProfile(
        0.12, 220, 0.7, 0.95, (0.00, 0.40, 0.60), 0.80, 0.15,
        -4.40, -2.75, -2.75, 8.0, 0.35, 2.8, 15, 1.0,
    ),
}  # fmt: skip


@dataclass
class SimResult:
    """The seven contract tables plus the ground truth."""

    tables: dict[str, pd.DataFrame]
    truth: pd.DataFrame


@dataclass
class _State:
    """Per-account (or per Monte Carlo path) state; every field is an array."""

    seg: np.ndarray
    base_e: np.ndarray
    csm_q: np.ndarray
    e: np.ndarray
    f: np.ndarray
    a: np.ndarray
    g: np.ndarray
    seats: np.ndarray
    plan: np.ndarray
    discount: np.ndarray
    monthly: np.ndarray
    term_end: np.ndarray
    start_month: np.ndarray
    alive: np.ndarray

    def take(self, idx: np.ndarray) -> _State:
        """A copy holding rows `idx` (repeats allowed: Monte Carlo replication)."""
        return _State(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    @property
    def mrr(self) -> np.ndarray:
        return np.round(self.seats * _PLAN_PRICE[self.plan] * self.discount, 2)


@dataclass
class _Decisions:
    churned: np.ndarray
    renewed_annual: np.ndarray
    changed: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _seg_param(seg: np.ndarray, field: str) -> np.ndarray:
    return np.array([getattr(PROFILES[s], field) for s in _SEGMENTS])[seg]


def _evolve(st: _State, rng: np.random.Generator, dyn: Dynamics) -> np.ndarray:
    """Move the latent state one month; return the champion-departure mask."""
    n = st.e.shape[0]
    left = rng.random(n) < 0.012
    st.g = 0.6 * st.g + left
    incident = rng.random(n) < dyn.incident_rate
    st.f = np.maximum(
        0.0,
        dyn.friction_persistence * st.f + incident * rng.uniform(0.5, 1.5, n)
        + rng.normal(0, 0.05, n),
    )  # fmt: skip
    st.e = (
        0.75 * st.e + 0.25 * st.base_e + dyn.engagement_from_attainment * st.a - 0.45 * st.g
        - dyn.engagement_from_friction * st.f + rng.normal(0, 0.22, n)
    )  # fmt: skip
    st.a = (
        dyn.attainment_persistence * st.a
        + dyn.attainment_pull * (dyn.attainment_from_engagement * st.e + st.csm_q)
        - 0.08 * st.f + rng.normal(0, 0.15, n)
    )  # fmt: skip
    return left


def churn_terms(st: _State, month: int, dyn: Dynamics) -> dict[str, np.ndarray]:
    """The additive terms of the log-odds of churning at a term end in `month`, by driver."""
    young = (month - st.start_month) < 6
    base = np.where(
        st.monthly,
        _seg_param(st.seg, "churn_logit_monthly"),
        _seg_param(st.seg, "churn_logit_annual"),
    )
    return {
        "base": base + dyn.churn_shift,
        "engagement": dyn.churn_engagement * st.e,
        "friction": dyn.churn_friction * st.f,
        "attainment": dyn.churn_attainment * st.a,
        "champion_gap": dyn.churn_champion_gap * st.g,
        "young": dyn.churn_young * young,
    }


def _churn_logit(st: _State, month: int, dyn: Dynamics) -> np.ndarray:
    """Log-odds of churning at a term end in `month` (before the term-end mask)."""
    terms = iter(churn_terms(st, month, dyn).values())
    total = next(terms)
    # Summed left to right, as ever: the default preset reproduces the same floats.
    for term in terms:
        total = total + term
    return total


def _decide(st: _State, month: int, rng: np.random.Generator, dyn: Dynamics) -> _Decisions:
    """Take the end-of-month commercial decisions for `month`, updating `st`."""
    n = st.e.shape[0]
    at_term = st.alive & (st.term_end == month)
    churned = at_term & (rng.random(n) < _sigmoid(_churn_logit(st, month, dyn)))
    st.alive = st.alive & ~churned
    renewed = at_term & ~churned
    st.term_end = np.where(renewed, st.term_end + np.where(st.monthly, 1, 12), st.term_end)
    renewed_annual = renewed & ~st.monthly
    # Every draw is taken whatever the preset, so presets differ only where they must.
    may_change = renewed if dyn.changes_at_renewal_only else st.alive

    # Contraction: mostly at annual renewals of disengaged accounts.
    contr_logit = (
        np.where(renewed_annual, dyn.contraction_at_renewal, dyn.contraction_otherwise)
        + dyn.contraction_engagement * st.e + dyn.contraction_friction * st.f
        + dyn.contraction_attainment * st.a
    )  # fmt: skip
    contract = may_change & (rng.random(n) < _sigmoid(contr_logit)) & (st.seats > 1)
    shrink = rng.uniform(0.1, 0.4, n)
    st.seats = np.where(contract, np.maximum(1, np.floor(st.seats * (1 - shrink))), st.seats)

    exp_logit = (
        (_seg_param(st.seg, "expansion_logit") + dyn.expansion_shift)
        + dyn.expansion_engagement * st.e + dyn.expansion_attainment * st.a
        + dyn.expansion_friction * st.f
    )  # fmt: skip
    expand = may_change & ~contract & (rng.random(n) < _sigmoid(exp_logit))
    upgrade = expand & (st.plan < 2) & (rng.random(n) < dyn.upgrade_share)
    grow = expand & ~upgrade
    st.plan = np.where(upgrade, st.plan + 1, st.plan)
    added = np.maximum(1, np.round(st.seats * rng.uniform(0.1, 0.6, n)))
    st.seats = np.where(grow, st.seats + added, st.seats)
    return _Decisions(churned, renewed_annual, contract | expand)


class _Calendar:
    """Month starts as datetime64[us], extending past the data for Monte Carlo look-ahead."""

    def __init__(self, start: dt.date, months: int) -> None:
        first = pd.Timestamp(start).to_period("M").to_timestamp()
        self.starts = pd.date_range(first, periods=months + 5, freq="MS").values.astype(
            "datetime64[us]"
        )
        self.first = first

    def start(self, m: int) -> np.datetime64:
        if 0 <= m < self.starts.size:
            return self.starts[m]
        return np.datetime64((self.first + pd.DateOffset(months=m)).to_datetime64(), "us")

    def days(self, m: int) -> int:
        return int((self.start(m + 1) - self.start(m)) // np.timedelta64(1, "D"))

    def month_end(self, m: int) -> np.datetime64:
        """The last day of month m (a subscription's end_date)."""
        return self.start(m + 1) - np.timedelta64(1, "D")


class _Builder:
    """Accumulates observed rows month by month; builds frames at the end."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[dict[str, np.ndarray]]] = {}

    def add(self, table: str, **cols: np.ndarray) -> None:
        self.chunks.setdefault(table, []).append(cols)

    def concat(self, table: str) -> dict[str, np.ndarray]:
        chunks = self.chunks.get(table, [])
        if not chunks:
            return {}
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _pick(rng: np.random.Generator, options: tuple, p: tuple | np.ndarray, n: int) -> np.ndarray:
    return rng.choice(len(options), size=n, p=np.asarray(p) / np.sum(p))


class Simulator:
    """Generates one data set; `run()` returns the tables and the ground truth."""

    def __init__(
        self,
        accounts: int,
        months: int,
        seed: int,
        start: dt.date,
        truth_samples: int = 200,
        *,
        dynamics: Dynamics | None = None,
        horizon_days: int = _LABEL_DEFAULTS.horizon_days,
        expansion_threshold: float = _LABEL_DEFAULTS.expansion_threshold,
        end_date_convention: EndDateConvention = "inclusive",
    ) -> None:
        if accounts < 1 or months < 1:
            raise ValueError("accounts and months must be at least 1")
        if horizon_days < 1 or expansion_threshold <= 0:
            raise ValueError("horizon_days must be at least 1 and expansion_threshold positive")
        if end_date_convention not in END_DATE_CONVENTIONS:
            raise ValueError(
                f"end_date_convention must be one of {END_DATE_CONVENTIONS}, "
                f"got {end_date_convention!r}"
            )
        self.n = accounts
        self.months = months
        self.samples = truth_samples
        self.dyn = dynamics or get_preset("default")
        self.horizon_days = horizon_days
        self.expansion_threshold = expansion_threshold
        self.end_date_convention = end_date_convention
        self.cal = _Calendar(start, months)
        seeds = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(seeds[0])
        self.mc_rng = np.random.default_rng(seeds[1])
        self.out = _Builder()
        self.cutoff = self.cal.start(months)

    # ----- accounts and initial state -------------------------------------
    def _init_accounts(self) -> _State:
        rng, n = self.rng, self.n
        seg = _pick(rng, _SEGMENTS, [PROFILES[s].share for s in _SEGMENTS], n)
        existing = rng.random(n) < 0.55
        start_month = np.where(existing, 0, rng.integers(1, max(self.months, 2), n))
        if self.months == 1:
            start_month[:] = 0
        annual_share = (
            _seg_param(seg, "annual_share")
            if self.dyn.annual_share is None
            else np.array(self.dyn.annual_share)[seg]
        )
        monthly = rng.random(n) >= annual_share
        # Existing annual accounts are somewhere in their term; new ones start one.
        term_end = np.where(
            monthly, start_month, np.where(existing, rng.integers(0, 12, n), start_month + 11)
        )
        tenure_before = np.where(existing, rng.integers(0, 48, n), 0)
        tenure_before = np.where(
            existing & ~monthly, np.maximum(tenure_before, 11 - term_end), tenure_before
        )
        seats = np.maximum(
            1, np.round(np.exp(np.log(_seg_param(seg, "seats_median")) + rng.normal(0, 1, n)
                               * _seg_param(seg, "seats_sigma")))
        )  # fmt: skip
        plan_p = np.array([PROFILES[s].plan_p for s in _SEGMENTS])[seg]
        plan = (rng.random(n)[:, None] > np.cumsum(plan_p, axis=1)).sum(axis=1)
        csm_id, csm_q = self._assign_csms(seg)
        base_e = _seg_param(seg, "engagement_mu") + rng.normal(0, 0.5, n)
        st = _State(
            seg=seg, base_e=base_e, csm_q=csm_q, e=base_e + rng.normal(0, 0.3, n),
            f=rng.exponential(0.2, n), a=rng.normal(0.0, 0.35, n), g=np.zeros(n),
            seats=seats.astype(float), plan=plan, discount=_seg_param(seg, "discount")
            * rng.uniform(0.9, 1.0, n), monthly=monthly, term_end=term_end,
            start_month=start_month - tenure_before, alive=np.zeros(n, dtype=bool),
        )  # fmt: skip
        self._write_accounts(st, seg, csm_id, start_month, tenure_before)
        self.first_month = start_month
        self.tenure_before = tenure_before
        self.row_start = np.where(
            monthly | ~existing, start_month - tenure_before * (monthly & existing), term_end - 11
        )
        return st

    def _assign_csms(self, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        csm_id = np.full(seg.shape[0], None, dtype=object)
        csm_q = np.full(seg.shape[0], -0.1)
        counter = 0
        for i, s in enumerate(_SEGMENTS):
            prof = PROFILES[s]
            idx = np.flatnonzero((seg == i) & (rng.random(seg.shape[0]) < prof.csm_coverage))
            if idx.size == 0:
                continue
            k = max(1, int(np.ceil(idx.size / prof.accounts_per_csm)))
            names = np.array([f"csm_{counter + j + 1:03d}" for j in range(k)], dtype=object)
            quality = rng.normal(0.05, 0.2, k)
            which = rng.integers(0, k, idx.size)
            csm_id[idx] = names[which]
            csm_q[idx] = quality[which]
            counter += k
        return csm_id, csm_q

    def _write_accounts(
        self, st: _State, seg: np.ndarray, csm: np.ndarray, start: np.ndarray, tenure: np.ndarray
    ) -> None:
        rng, n = self.rng, self.n
        self.account_ids = _ids("A", n, 5)
        first = np.array([self.cal.start(int(m)) for m in (start - tenure)])
        # Signed up some days before the first subscription starts.
        created = first - (rng.integers(1, 25 * 86_400, n) * 1_000_000).astype("timedelta64[us]")
        words = np.array(
            [
                "Acme",
                "Blue",
                "Cedar",
                "Delta",
                "Ember",
                "Fjord",
                "Granite",
                "Helix",
                "Ion",
                "Juniper",
                "Kite",
                "Lumen",
                "Maple",
                "Nova",
                "Orbit",
                "Pine",
                "Quartz",
                "River",
                "Summit",
                "Tidal",
                "Umber",
                "Vertex",
                "Willow",
                "Zen",
            ]
        )
        kinds = np.array(["Labs", "Systems", "Health", "Logistics", "Retail", "Capital", "Media",
                          "Foods", "Analytics", "Works", "Partners", "Group"])  # fmt: skip
        name = np.char.add(
            np.char.add(words[rng.integers(0, words.size, n)], " "),
            np.char.add(kinds[rng.integers(0, kinds.size, n)], " "),
        )
        name = np.char.add(name, self.account_ids.astype(str))
        self.out.add(
            T.ACCOUNTS,
            **{
                Col.ACCOUNT_ID: self.account_ids,
                Col.NAME: name.astype(object),
                Col.SEGMENT: np.array([s.value for s in _SEGMENTS], dtype=object)[seg],
                Col.INDUSTRY: np.array(_INDUSTRIES, dtype=object)[
                    rng.integers(0, len(_INDUSTRIES), n)
                ],
                Col.REGION: np.array(_REGIONS, dtype=object)[_pick(rng, _REGIONS, _REGION_P, n)],
                Col.CREATED_AT: created,
                Col.CSM_ID: csm,
            },
        )

    # ----- subscriptions ----------------------------------------------------
    def _open_rows(self, st: _State, idx: np.ndarray, start_month: np.ndarray) -> None:
        """Start a new subscription row for accounts `idx` at `start_month`."""
        if idx.size == 0:
            return
        end = np.where(st.monthly[idx], -1, st.term_end[idx])
        base = len(self.sub_acc)
        self.sub_acc += idx.tolist()
        self.sub_start += start_month.tolist()
        self.sub_end += end.tolist()
        self.sub_mrr += st.mrr[idx].tolist()
        self.sub_seats += st.seats[idx].astype(int).tolist()
        self.sub_plan += st.plan[idx].tolist()
        self.current_row[idx] = np.arange(base, base + idx.size)

    def _close_rows(self, idx: np.ndarray, month: int) -> None:
        for r in self.current_row[idx]:
            self.sub_end[r] = month

    # ----- observations -------------------------------------------------------
    def _observe(self, st: _State, idx: np.ndarray, m: int, left: np.ndarray) -> None:
        rng = self.rng
        self.user_offset[idx] += rng.binomial(st.seats[idx].astype(int), 0.02)
        self.user_offset[idx] += np.round(left[idx] * st.seats[idx] * 0.3).astype(int)
        util = _sigmoid(0.4 + 1.3 * st.e[idx] - 0.8 * st.g[idx])
        active = rng.binomial(st.seats[idx].astype(int), util)
        self._usage(st, idx, m, active)
        self._tickets(st, idx, m, util)
        self._nps(st, idx, m, active)
        self._goals(st, idx, m)

    def _times(self, m: int, n: int, first_days: int | None = None) -> np.ndarray:
        """Random instants within month m, fewer at weekends."""
        rng = self.rng
        days = first_days or self.cal.days(m)
        span = days * _US_PER_DAY
        t = rng.integers(0, span, n)
        weekday = (self.cal.start(m).astype("datetime64[D]").astype(int) + 3 + t // _US_PER_DAY) % 7
        redraw = (weekday >= 5) & (rng.random(n) < 0.7)
        t[redraw] = rng.integers(0, span, int(redraw.sum()))
        return self.cal.start(m) + t.astype("timedelta64[us]")

    def _usage(self, st: _State, idx: np.ndarray, m: int, active: np.ndarray) -> None:
        rng = self.rng
        rate = _seg_param(st.seg[idx], "events_per_user") * np.exp(0.45 * st.e[idx])
        n_ev = rng.poisson(active * rate)
        total = int(n_ev.sum())
        if total == 0:
            return
        who = np.repeat(np.arange(idx.size), n_ev)
        acc = idx[who]
        # Heavy users dominate: user rank ~ U^1.7 of the active cohort.
        rank = np.floor(active[who] * rng.random(total) ** 1.7).astype(np.int64)
        user = self.user_offset[acc].astype(np.int64) + rank
        w = _EVENT_BASE_W[None, :] * np.where(
            _KEY_FEATURE[None, :], np.exp(0.8 * st.e[idx] + 0.6 * st.a[idx])[:, None], 1.0
        )
        cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
        etype = (rng.random(total)[:, None] > cum[who]).sum(axis=1).clip(0, len(_EVENT_TYPES) - 1)
        qty = np.where(etype == _API_CALL, 1 + rng.poisson(25, total), 1).astype(float)
        times = self._times(m, total)
        order = np.argsort(times, kind="stable")
        self.out.add(
            T.USAGE_EVENTS,
            acc=acc[order],
            user=user[order],
            time=times[order],
            etype=etype[order],
            qty=qty[order],
        )

    def _tickets(self, st: _State, idx: np.ndarray, m: int, util: np.ndarray) -> None:
        rng = self.rng
        scale = _seg_param(st.seg[idx], "ticket_scale") * st.seats[idx] ** 0.5
        n_eng = rng.poisson(scale * 0.22 * util * np.exp(0.5 * st.e[idx]))
        n_fr = rng.poisson(scale * (0.03 + 0.45 * st.f[idx]))
        for n_t, engaged in ((n_eng, True), (n_fr, False)):
            total = int(n_t.sum())
            if total == 0:
                continue
            who = np.repeat(np.arange(idx.size), n_t)
            f = st.f[idx][who]
            if engaged:
                cat = np.array(_ENGAGED_CATEGORIES, dtype=object)[
                    _pick(rng, _ENGAGED_CATEGORIES, _ENGAGED_CAT_P, total)
                ]
                pri = _pick(rng, _PRIORITIES, (0.45, 0.45, 0.09, 0.01), total)
            else:
                cat = np.array(_FRICTION_CATEGORIES, dtype=object)[
                    _pick(rng, _FRICTION_CATEGORIES, _FRICTION_CAT_P, total)
                ]
                urgent = _sigmoid(-1.5 + 1.0 * f)
                u = rng.random(total)
                pri = np.where(
                    u < urgent * 0.4, 3, np.where(u < urgent, 2, np.where(u < 0.85, 1, 0))
                )
            hours = np.exp(rng.normal(np.log(6) + 0.6 * pri + 0.5 * f, 1.0))
            created = self._times(m, total)
            resolved = created + (hours * 3_600e6).astype("timedelta64[us]")
            resolved = np.where(resolved < self.cutoff, resolved, np.datetime64("NaT"))
            esc = rng.random(total) < _sigmoid(-3.4 + 0.9 * (pri >= 2) + 0.8 * f)
            csat_mu = 4.5 - 0.5 * f - 0.35 * np.log1p(hours / 24) + 0.15 * st.e[idx][who]
            csat = np.clip(np.round(csat_mu + rng.normal(0, 0.7, total)), 1, 5)
            csat = np.where((rng.random(total) < 0.45) & ~np.isnat(resolved), csat, np.nan)
            self.out.add(
                T.SUPPORT_TICKETS, acc=idx[who], created=created, resolved=resolved,
                pri=pri, cat=cat, csat=csat, esc=esc,
            )  # fmt: skip

    def _nps(self, st: _State, idx: np.ndarray, m: int, active: np.ndarray) -> None:
        rng = self.rng
        surveyed = (m + idx) % 3 == 0
        rr = 0.04 + 0.12 * _sigmoid(1.5 * st.e[idx] - 0.5)
        n_resp = np.where(surveyed, rng.binomial(np.minimum(active, 60), rr), 0)
        total = int(n_resp.sum())
        if total == 0:
            return
        who = np.repeat(np.arange(idx.size), n_resp)
        acc = idx[who]
        sentiment = 0.7 * st.e[acc] + 0.9 * st.a[acc] - 0.8 * st.f[acc] - 0.9 * st.g[acc]
        score = np.clip(np.round(7.0 + 1.4 * sentiment + rng.normal(0, 1.7, total)), 0, 10)
        user = self.user_offset[acc] + np.floor(active[who] * rng.random(total)).astype(int)
        bucket = np.where(score <= 6, "detractor", np.where(score <= 8, "passive", "promoter"))
        comment = np.full(total, None, dtype=object)
        has = rng.random(total) < 0.4
        for b, texts in _COMMENTS.items():
            sel = has & (bucket == b)
            comment[sel] = np.array(texts, dtype=object)[rng.integers(0, len(texts), sel.sum())]
        self.out.add(
            T.NPS_RESPONSES, acc=acc, user=user, time=self._times(m, total, first_days=14),
            score=score.astype(int), comment=comment,
        )  # fmt: skip

    # ----- goals --------------------------------------------------------------
    def _new_goals(
        self, st: _State, acc: np.ndarray, start_month: np.ndarray, m: int | None = None
    ) -> None:
        """Append goals for accounts `acc`; goals set before month `m` get their past progress."""
        rng, k = self.rng, acc.size
        if k == 0:
            return
        kpi = rng.integers(0, len(_KPIS), k)
        lo = np.array([x[1] for x in _KPIS])[kpi]
        hi = np.array([x[2] for x in _KPIS])[kpi]
        rel = np.array([x[3] for x in _KPIS])[kpi] * rng.uniform(0.7, 1.5, k)
        dec = np.array([x[4] == Direction.DECREASE for x in _KPIS])[kpi]
        baseline = np.round(rng.uniform(lo, hi), 1)
        target = np.round(baseline * np.where(dec, 1 - rel, 1 + rel), 1)
        duration = rng.choice([3, 6, 6, 9, 12], k)
        self.goal_acc = np.concatenate([self.goal_acc, acc])
        self.goal_start = np.concatenate([self.goal_start, start_month])
        self.goal_dur = np.concatenate([self.goal_dur, duration])
        self.goal_kpi = np.concatenate([self.goal_kpi, kpi])
        self.goal_base = np.concatenate([self.goal_base, baseline])
        self.goal_target = np.concatenate([self.goal_target, target])
        q = np.exp(rng.normal(0, 0.25, k))
        self.goal_q = np.concatenate([self.goal_q, q])
        past = 0 if m is None else np.maximum(m - start_month, 0)
        pace = np.maximum(0.0, 1 + self.dyn.goal_progress_attainment * st.a[acc])
        progress = past * pace * q / duration
        self.goal_progress = np.concatenate([self.goal_progress, progress])
        self.goal_day = np.concatenate([self.goal_day, rng.integers(0, 20, k)])

    def _goals_for_new_accounts(self, st: _State, idx: np.ndarray, m: int) -> None:
        rng = self.rng
        has_csm = st.csm_q[idx] != -0.1
        n_goals = np.where(
            has_csm | (rng.random(idx.size) < self.dyn.tech_touch_goal_share),
            1 + rng.poisson(np.maximum(_seg_param(st.seg[idx], "goals_mean") - 1, 0)),
            0,
        )
        acc = np.repeat(idx, n_goals)
        # Goals of accounts already live when the data starts were set in the past.
        back = rng.integers(0, np.minimum(self.tenure_before[acc], 6) + 1)
        self._new_goals(st, acc, m - back, m)

    def _goals(self, st: _State, idx: np.ndarray, m: int) -> None:
        rng = self.rng
        if self.goal_acc.size == 0:
            return
        alive = np.zeros(self.n, dtype=bool)
        alive[idx] = True
        due = self.goal_start + self.goal_dur
        live = alive[self.goal_acc] & (self.goal_start <= m) & (m < due + 2)
        acc = self.goal_acc[live]
        pace = 1 + self.dyn.goal_progress_attainment * st.a[acc] + rng.normal(0, 0.3, acc.size)
        step = np.maximum(0.0, pace)
        self.goal_progress[live] += step * self.goal_q[live] / self.goal_dur[live]
        measure_p = np.where(st.csm_q[acc] != -0.1, 0.5, 0.3) + 0.35 * _sigmoid(st.e[acc])
        measured = rng.random(acc.size) < measure_p
        g = np.flatnonzero(live)[measured]
        base, target = self.goal_base[g], self.goal_target[g]
        value = base + (target - base) * self.goal_progress[g]
        value = np.round(value + rng.normal(0, 0.08, g.size) * np.abs(target - base), 2)
        self.out.add(T.OUTCOME_MEASUREMENTS, goal=g, time=self._times(m, g.size), value=value)
        # Goals that came due this month are renewed for engaged accounts.
        ending = alive[self.goal_acc] & (due == m + 1) & (m + 1 < self.months)
        acc_end = self.goal_acc[ending]
        renew = rng.random(acc_end.size) < 0.45 + 0.35 * _sigmoid(st.e[acc_end])
        self._new_goals(st, acc_end[renew], np.full(int(renew.sum()), m + 1))

    # ----- ground truth ---------------------------------------------------------
    def _truth(self, st: _State, m: int) -> None:
        """Monte Carlo estimate of the true probabilities at as_of = start of month m."""
        idx = np.flatnonzero(st.alive)
        if idx.size == 0:
            return
        k = self.samples
        sim = st.take(np.repeat(idx, k))
        mrr0 = sim.mrr
        horizon_end = self.cal.start(m) + np.timedelta64(self.horizon_days, "D")
        churned = np.zeros(sim.e.shape[0], dtype=bool)
        mrr_end = mrr0.copy()
        j = m
        while self.cal.month_end(j) <= horizon_end or self.cal.start(j + 1) <= horizon_end:
            _evolve(sim, self.mc_rng, self.dyn)
            d = _decide(sim, j, self.mc_rng, self.dyn)
            if self.cal.month_end(j) <= horizon_end:
                churned |= d.churned
            if self.cal.start(j + 1) <= horizon_end:
                mrr_end = np.where(sim.alive, sim.mrr, 0.0)
            j += 1
        p_churn = churned.reshape(-1, k).mean(axis=1)
        expanded = is_expansion(mrr_end, mrr0, self.expansion_threshold)
        p_exp = expanded.reshape(-1, k).mean(axis=1)
        self.out.add(TRUTH.name, acc=idx, month=np.full(idx.size, m), pc=p_churn, pe=p_exp)

    # ----- main loop ----------------------------------------------------------------
    def run(self) -> SimResult:
        """Simulate every month; return the contract tables and the truth."""
        st = self._init_accounts()
        self.current_row = np.full(self.n, -1)
        self.user_offset = np.zeros(self.n, dtype=np.int64)
        self.sub_acc: list[int] = []
        self.sub_start: list[int] = []
        self.sub_end: list[int] = []
        self.sub_mrr: list[float] = []
        self.sub_seats: list[int] = []
        self.sub_plan: list[int] = []
        for name in ("acc", "start", "dur", "kpi", "day"):
            setattr(self, f"goal_{name}", np.zeros(0, dtype=np.int64))
        for name in ("base", "target", "q", "progress"):
            setattr(self, f"goal_{name}", np.zeros(0))
        for m in range(self.months + 1):
            starting = np.flatnonzero(self.first_month == m)
            st.alive[starting] = True
            self._open_rows(st, starting, self.row_start[starting])
            self._goals_for_new_accounts(st, starting, m)
            self._truth(st, m)
            if m == self.months:
                break
            left = _evolve(st, self.rng, self.dyn)
            idx = np.flatnonzero(st.alive)
            self._observe(st, idx, m, left)
            d = _decide(st, m, self.rng, self.dyn)
            self._close_rows(np.flatnonzero(d.churned | d.changed), m)
            new_rows = np.flatnonzero(d.changed | (d.renewed_annual & ~d.changed))
            self._open_rows(st, new_rows, np.full(new_rows.size, m + 1))
            if m % 6 == 5:
                log.info("simulated month %d/%d", m + 1, self.months)
        self.state = st  # kept for diagnostics: the hidden state at the data cutoff
        return SimResult(self._tables(), self._truth_frame())

    # ----- frames -------------------------------------------------------------------
    def _month_starts(self, months: np.ndarray) -> np.ndarray:
        lo = int(months.min()) if months.size else 0
        table = np.array([self.cal.start(i) for i in range(lo, int(months.max()) + 2)])
        return table[months - lo]

    def _tables(self) -> dict[str, pd.DataFrame]:
        ids = self.account_ids
        tables = {T.ACCOUNTS: pd.DataFrame(self.out.concat(T.ACCOUNTS))}
        tables[T.SUBSCRIPTIONS] = self._subscriptions_frame()
        tables[T.USAGE_EVENTS] = self._usage_frame()
        tk = self.out.concat(T.SUPPORT_TICKETS)
        order = np.argsort(tk["created"], kind="stable")
        tk = {k: v[order] for k, v in tk.items()}
        tables[T.SUPPORT_TICKETS] = pd.DataFrame({
            Col.TICKET_ID: _ids("T", order.size, 7),
            Col.ACCOUNT_ID: ids[tk["acc"]],
            Col.CREATED_AT: tk["created"],
            Col.RESOLVED_AT: tk["resolved"],
            Col.PRIORITY: np.array(_PRIORITIES, dtype=object)[tk["pri"]],
            Col.CATEGORY: tk["cat"],
            Col.CSAT: pd.array(tk["csat"], dtype="Int64"),
            Col.ESCALATED: tk["esc"],
        })  # fmt: skip
        nps = self.out.concat(T.NPS_RESPONSES)
        order = np.argsort(nps["time"], kind="stable")
        nps = {k: v[order] for k, v in nps.items()}
        tables[T.NPS_RESPONSES] = pd.DataFrame({
            Col.RESPONSE_ID: _ids("R", order.size, 7),
            Col.ACCOUNT_ID: ids[nps["acc"]],
            Col.USER_ID: self._user_ids(nps["acc"], nps["user"]).astype(object),
            Col.RESPONDED_AT: nps["time"],
            Col.SCORE: nps["score"],
            Col.COMMENT: nps["comment"],
        })  # fmt: skip
        tables.update(self._outcome_frames())
        return {name: self._typed(name, df) for name, df in tables.items()}

    @staticmethod
    def _typed(name: str, df: pd.DataFrame) -> pd.DataFrame:
        """Cast to the contract dtypes (the simulator writes contract-exact tables)."""
        table = TABLES[name]
        out = {}
        for c in table.columns:
            s = df[c.name]
            if isinstance(s.dtype, pd.CategoricalDtype):
                out[c.name] = s
            elif c.kind.value == "int" and s.isna().any():
                out[c.name] = s.astype("Int64")
            else:
                out[c.name] = s.astype(c.dtype)
        return pd.DataFrame(out)

    def _subscriptions_frame(self) -> pd.DataFrame:
        acc = np.array(self.sub_acc)
        start = self._month_starts(np.array(self.sub_start))
        end_m = np.array(self.sub_end)
        # A term ending with month m: service stops when month m + 1 starts.
        gap = np.timedelta64(1 if self.end_date_convention == "inclusive" else 0, "D")
        end = np.where(
            end_m >= 0, self._month_starts(np.maximum(end_m, 0) + 1) - gap, np.datetime64("NaT")
        )
        df = pd.DataFrame({
            Col.ACCOUNT_ID: self.account_ids[acc],
            Col.START_DATE: start,
            Col.END_DATE: end,
            Col.MRR: np.array(self.sub_mrr),
            Col.SEATS: np.array(self.sub_seats),
            Col.PLAN: np.array(_PLANS, dtype=object)[np.array(self.sub_plan)],
        })  # fmt: skip
        return df.sort_values([Col.ACCOUNT_ID, Col.START_DATE], kind="stable").reset_index(
            drop=True
        )

    def _user_ids(self, acc: np.ndarray, user: np.ndarray) -> pd.Categorical:
        key = acc.astype(np.int64) * 10_000_000 + user
        uniq, codes = np.unique(key, return_inverse=True)
        names = [f"{self.account_ids[k // 10_000_000]}-u{k % 10_000_000:05d}" for k in uniq]
        return pd.Categorical.from_codes(codes, categories=names)

    def _usage_frame(self) -> pd.DataFrame:
        ev = self.out.concat(T.USAGE_EVENTS)
        if not ev:
            ev = {k: np.zeros(0, dtype=np.int64) for k in ("acc", "user", "etype")}
            ev |= {"time": np.zeros(0, "datetime64[us]"), "qty": np.zeros(0)}
        return pd.DataFrame({
            Col.ACCOUNT_ID: pd.Categorical.from_codes(ev["acc"], categories=self.account_ids),
            Col.USER_ID: self._user_ids(ev["acc"], ev["user"]),
            Col.EVENT_TIME: ev["time"],
            Col.EVENT_TYPE: pd.Categorical.from_codes(ev["etype"], categories=_EVENT_TYPES),
            Col.QUANTITY: ev["qty"],
        })  # fmt: skip

    def _outcome_frames(self) -> dict[str, pd.DataFrame]:
        k = self.goal_acc.size
        goal_ids = _ids("G", k, 6)
        start = self._month_starts(self.goal_start) + self.goal_day.astype("timedelta64[D]")
        due = self._month_starts(self.goal_start + self.goal_dur) + self.goal_day.astype(
            "timedelta64[D]"
        )
        outcomes = pd.DataFrame({
            Col.OUTCOME_ID: goal_ids,
            Col.ACCOUNT_ID: self.account_ids[self.goal_acc],
            Col.KPI: np.array([x[0] for x in _KPIS], dtype=object)[self.goal_kpi],
            Col.BASELINE: self.goal_base,
            Col.TARGET: self.goal_target,
            Col.DIRECTION: np.array([x[4].value for x in _KPIS], dtype=object)[self.goal_kpi],
            Col.START_DATE: start.astype("datetime64[D]").astype("datetime64[us]"),
            Col.DUE_DATE: due.astype("datetime64[D]").astype("datetime64[us]"),
        })  # fmt: skip
        ms = self.out.concat(T.OUTCOME_MEASUREMENTS)
        if not ms:
            ms = {"goal": np.zeros(0, dtype=np.int64), "time": np.zeros(0, "datetime64[us]"),
                  "value": np.zeros(0)}  # fmt: skip
        # A measurement is only taken once its goal is set.
        keep = ms["time"] >= outcomes[Col.START_DATE].to_numpy()[ms["goal"]]
        meas = pd.DataFrame({
            Col.OUTCOME_ID: goal_ids[ms["goal"][keep]],
            Col.MEASURED_AT: ms["time"][keep],
            Col.VALUE: ms["value"][keep],
        }).sort_values(Col.MEASURED_AT, kind="stable")  # fmt: skip
        return {T.OUTCOMES: outcomes, T.OUTCOME_MEASUREMENTS: meas.reset_index(drop=True)}

    def _truth_frame(self) -> pd.DataFrame:
        tr = self.out.concat(TRUTH.name)
        return pd.DataFrame({
            Col.ACCOUNT_ID: self.account_ids[tr["acc"]].astype(object),
            Col.AS_OF: self._month_starts(tr["month"]),
            Col.HORIZON_DAYS: np.full(tr["acc"].size, self.horizon_days),
            Col.TRUE_CHURN_PROBABILITY: tr["pc"],
            Col.TRUE_EXPANSION_PROBABILITY: tr["pe"],
        }).astype({Col.ACCOUNT_ID: "str"})  # fmt: skip


def generate(
    accounts: int,
    months: int | None,
    seed: int,
    start: dt.date,
    truth_samples: int = 200,
    *,
    preset: str | Dynamics = "default",
    horizon_days: int = _LABEL_DEFAULTS.horizon_days,
    expansion_threshold: float = _LABEL_DEFAULTS.expansion_threshold,
    end_date_convention: EndDateConvention = "inclusive",
) -> SimResult:
    """Simulate a data set (deterministic per arguments); `months=None` takes the preset's."""
    dyn = get_preset(preset) if isinstance(preset, str) else preset
    if months is None:
        months = dyn.months
    if months is None:
        raise ValueError(f"preset {dyn.name!r} sets no months: pass months")
    log.debug("simulator preset %s: %s", dyn.name, dyn.description)
    sim = Simulator(
        accounts, months, seed, start, truth_samples, dynamics=dyn, horizon_days=horizon_days,
        expansion_threshold=expansion_threshold, end_date_convention=end_date_convention,
    )  # fmt: skip
    return sim.run()
