"""The raw data contract: the seven input tables, declared once.

Everything that touches raw data derives from the declarations here: the readers'
type coercion (`features.io`), the Great Expectations suites (`data_checks`), the
sample-data simulator (the `simulator` package) and, later, the feature pipeline.
Other modules refer to columns through `Col` and to tables through `T`, never by
typing the name again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

#: Longest identifier (account_id, user_id, ticket_id, ...) the contract accepts; the score
#: store's id columns are declared with the same length.
MAX_ID_LENGTH: Final = 128
#: Characters no identifier may hold (C0, DEL, C1: newlines, escapes that rewrite a
#: terminal). Written so that Python `re`, pandas and DuckDB (RE2) read it alike.
CONTROL_CHARACTERS: Final = r"[\x00-\x1f\x7f-\x9f]"


class T:
    """Table names (file stems in a data folder)."""

    ACCOUNTS: Final = "accounts"
    SUBSCRIPTIONS: Final = "subscriptions"
    USAGE_EVENTS: Final = "usage_events"
    SUPPORT_TICKETS: Final = "support_tickets"
    NPS_RESPONSES: Final = "nps_responses"
    OUTCOMES: Final = "outcomes"
    OUTCOME_MEASUREMENTS: Final = "outcome_measurements"


class Col:
    """Column names of the raw tables."""

    ACCOUNT_ID: Final = "account_id"
    NAME: Final = "name"
    SEGMENT: Final = "segment"
    INDUSTRY: Final = "industry"
    REGION: Final = "region"
    CREATED_AT: Final = "created_at"
    CSM_ID: Final = "csm_id"
    START_DATE: Final = "start_date"
    END_DATE: Final = "end_date"
    MRR: Final = "mrr"
    SEATS: Final = "seats"
    PLAN: Final = "plan"
    USER_ID: Final = "user_id"
    EVENT_TIME: Final = "event_time"
    EVENT_TYPE: Final = "event_type"
    QUANTITY: Final = "quantity"
    TICKET_ID: Final = "ticket_id"
    RESOLVED_AT: Final = "resolved_at"
    PRIORITY: Final = "priority"
    CATEGORY: Final = "category"
    CSAT: Final = "csat"
    ESCALATED: Final = "escalated"
    RESPONSE_ID: Final = "response_id"
    RESPONDED_AT: Final = "responded_at"
    SCORE: Final = "score"
    COMMENT: Final = "comment"
    OUTCOME_ID: Final = "outcome_id"
    KPI: Final = "kpi"
    BASELINE: Final = "baseline"
    TARGET: Final = "target"
    DIRECTION: Final = "direction"
    DUE_DATE: Final = "due_date"
    MEASURED_AT: Final = "measured_at"
    VALUE: Final = "value"
    # simulator ground truth
    AS_OF: Final = "as_of"
    HORIZON_DAYS: Final = "horizon_days"
    TRUE_CHURN_PROBABILITY: Final = "true_churn_probability"
    TRUE_EXPANSION_PROBABILITY: Final = "true_expansion_probability"


class Segment(StrEnum):
    SMB = "smb"
    MID_MARKET = "mid_market"
    ENTERPRISE = "enterprise"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Direction(StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"


class Kind(StrEnum):
    """Logical column types; `PANDAS_DTYPE` maps them to the dtype a reader yields."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    DATE = "date"


#: dtype of a coerced column, by (kind, nullable). Timestamps are naive UTC.
PANDAS_DTYPE: Final[dict[tuple[Kind, bool], str]] = {
    (Kind.STRING, False): "str",
    (Kind.STRING, True): "str",
    (Kind.INT, False): "int64",
    (Kind.INT, True): "Int64",
    (Kind.FLOAT, False): "float64",
    (Kind.FLOAT, True): "float64",
    (Kind.BOOL, False): "bool",
    (Kind.BOOL, True): "boolean",
    (Kind.TIMESTAMP, False): "datetime64[us]",
    (Kind.TIMESTAMP, True): "datetime64[us]",
    (Kind.DATE, False): "datetime64[us]",
    (Kind.DATE, True): "datetime64[us]",
}


@dataclass(frozen=True)
class Column:
    """One column of a raw table.

    `observed` marks event times that define the data cutoff; `future_ok` marks
    dates that may legitimately lie after the run date (a contract term that runs
    on, a goal due later). `default` fills a column the source omitted. An
    `identifier` holds at most MAX_ID_LENGTH characters and no CONTROL_CHARACTERS.
    """

    name: str
    kind: Kind
    description: str
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None
    observed: bool = False
    future_ok: bool = False
    default: object = None
    identifier: bool = False

    @property
    def dtype(self) -> str:
        """The pandas dtype a reader coerces this column to."""
        return PANDAS_DTYPE[(self.kind, self.nullable)]

    @property
    def is_time(self) -> bool:
        return self.kind in (Kind.TIMESTAMP, Kind.DATE)

    @property
    def must_be_finite(self) -> bool:
        """Floats may be null (NaN) but never infinite."""
        return self.kind == Kind.FLOAT


@dataclass(frozen=True)
class ForeignKey:
    """`column` of this table must exist in `ref_table.ref_column`."""

    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class Ordering:
    """`later` must be on or after `earlier` in the same row (nulls pass)."""

    earlier: str
    later: str


@dataclass(frozen=True)
class Table:
    """A raw table: its columns, key, and the relations other checks derive from."""

    name: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    required: bool = False  # present and not empty
    foreign_keys: tuple[ForeignKey, ...] = ()
    orderings: tuple[Ordering, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """The column called `name`; KeyError names the table when absent."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    @property
    def required_columns(self) -> list[str]:
        """Columns a source must provide (those with a default may be omitted)."""
        return [c.name for c in self.columns if c.default is None]


# -- value rules: what `cshealth check` (GX) and `cshealth features` (pandas, DuckDB) enforce


def future_checked(col: Column) -> bool:
    """Whether the column gets a 'not after the run date' check."""
    return col.is_time and not col.future_ok


def run_bound(run_date: dt.date | dt.datetime) -> dt.datetime:
    """The latest allowed timestamp: the run date's last microsecond, or the run datetime."""
    if isinstance(run_date, dt.datetime):
        if run_date.tzinfo is not None:
            run_date = run_date.astimezone(dt.UTC).replace(tzinfo=None)
        return run_date
    return dt.datetime.combine(run_date, dt.time.max)


def future_rule(bound: dt.datetime) -> str:
    """The name of the run-date check."""
    return f"not after run date {bound:%Y-%m-%d %H:%M:%S}"


class Rule:
    """Names of the value checks, shared by the GX suites and the feature stage."""

    NOT_EMPTY: Final = "not empty"
    FINITE: Final = "finite"
    ID_LENGTH: Final = f"at most {MAX_ID_LENGTH} characters"
    NO_CONTROL: Final = "no control characters"
    UNIQUE_KEY: Final = "unique key"


# -- the tables


def _fk_account() -> ForeignKey:
    return ForeignKey(Col.ACCOUNT_ID, T.ACCOUNTS, Col.ACCOUNT_ID)


def _id(name: str, description: str, nullable: bool = False) -> Column:
    return Column(name, Kind.STRING, description, nullable=nullable, identifier=True)


def _account_col() -> Column:
    return _id(Col.ACCOUNT_ID, "Customer account identifier.")


TABLES: Final[dict[str, Table]] = {
    t.name: t
    for t in (
        Table(
            T.ACCOUNTS,
            "One row per customer account.",
            (
                _account_col(),
                Column(Col.NAME, Kind.STRING, "Account display name."),
                Column(
                    Col.SEGMENT,
                    Kind.STRING,
                    "Go-to-market segment.",
                    allowed=tuple(s.value for s in Segment),
                ),
                Column(Col.INDUSTRY, Kind.STRING, "Industry vertical.", nullable=True),
                Column(Col.REGION, Kind.STRING, "Sales region.", nullable=True),
                Column(Col.CREATED_AT, Kind.TIMESTAMP, "When the account was created."),
                _id(
                    Col.CSM_ID,
                    "Assigned Customer Success Manager; null for tech-touch accounts.",
                    nullable=True,
                ),
            ),
            key=(Col.ACCOUNT_ID,),
            required=True,
        ),
        Table(
            T.SUBSCRIPTIONS,
            "Contract terms; a renewal or price change starts a new row. Churn is no "
            "active row after the last end_date.",
            (
                _account_col(),
                Column(Col.START_DATE, Kind.DATE, "First day of this term.", observed=True),
                Column(
                    Col.END_DATE,
                    Kind.DATE,
                    "End of this term: its last day of service, or the first day without "
                    "it (the next term's start), per features.end_date_convention; null "
                    "while it runs on.",
                    nullable=True,
                    future_ok=True,
                ),
                Column(Col.MRR, Kind.FLOAT, "Monthly recurring revenue.", min_value=0.0),
                Column(Col.SEATS, Kind.INT, "Licensed seats.", min_value=0),
                Column(Col.PLAN, Kind.STRING, "Plan name."),
            ),
            key=(Col.ACCOUNT_ID, Col.START_DATE),
            required=True,
            foreign_keys=(_fk_account(),),
            orderings=(Ordering(Col.START_DATE, Col.END_DATE),),
        ),
        Table(
            T.USAGE_EVENTS,
            "Product usage; identical repeated events are legitimate (no key).",
            (
                _account_col(),
                _id(Col.USER_ID, "User who acted."),
                Column(Col.EVENT_TIME, Kind.TIMESTAMP, "When it happened.", observed=True),
                Column(Col.EVENT_TYPE, Kind.STRING, "What was done."),
                Column(
                    Col.QUANTITY,
                    Kind.FLOAT,
                    "How much (default 1).",
                    min_value=0.0,
                    default=1.0,
                ),
            ),
            required=True,
            foreign_keys=(_fk_account(),),
        ),
        Table(
            T.SUPPORT_TICKETS,
            "Support tickets.",
            (
                _id(Col.TICKET_ID, "Ticket identifier."),
                _account_col(),
                Column(Col.CREATED_AT, Kind.TIMESTAMP, "When it was opened.", observed=True),
                Column(
                    Col.RESOLVED_AT,
                    Kind.TIMESTAMP,
                    "When it was resolved; null while open.",
                    nullable=True,
                ),
                Column(
                    Col.PRIORITY,
                    Kind.STRING,
                    "Priority.",
                    allowed=tuple(p.value for p in Priority),
                ),
                Column(Col.CATEGORY, Kind.STRING, "Ticket category."),
                Column(
                    Col.CSAT,
                    Kind.INT,
                    "Satisfaction rating 1–5, if given.",
                    nullable=True,
                    min_value=1,
                    max_value=5,
                ),
                Column(Col.ESCALATED, Kind.BOOL, "Escalated beyond first line."),
            ),
            key=(Col.TICKET_ID,),
            foreign_keys=(_fk_account(),),
            orderings=(Ordering(Col.CREATED_AT, Col.RESOLVED_AT),),
        ),
        Table(
            T.NPS_RESPONSES,
            "Net Promoter Score survey responses.",
            (
                _id(Col.RESPONSE_ID, "Response identifier."),
                _account_col(),
                _id(Col.USER_ID, "Respondent."),
                Column(Col.RESPONDED_AT, Kind.TIMESTAMP, "When answered.", observed=True),
                Column(Col.SCORE, Kind.INT, "Score 0–10.", min_value=0, max_value=10),
                Column(Col.COMMENT, Kind.STRING, "Free-text comment.", nullable=True),
            ),
            key=(Col.RESPONSE_ID,),
            foreign_keys=(_fk_account(),),
        ),
        Table(
            T.OUTCOMES,
            "Measurable business goals the customer bought the product for.",
            (
                _id(Col.OUTCOME_ID, "Goal identifier."),
                _account_col(),
                Column(Col.KPI, Kind.STRING, "The KPI measured."),
                Column(Col.BASELINE, Kind.FLOAT, "KPI value when the goal was set."),
                Column(Col.TARGET, Kind.FLOAT, "KPI value that counts as achieved."),
                Column(
                    Col.DIRECTION,
                    Kind.STRING,
                    "Whether the KPI should rise or fall.",
                    allowed=tuple(d.value for d in Direction),
                ),
                Column(Col.START_DATE, Kind.DATE, "When the goal was set."),
                Column(Col.DUE_DATE, Kind.DATE, "When it should be reached.", future_ok=True),
            ),
            key=(Col.OUTCOME_ID,),
            foreign_keys=(_fk_account(),),
            orderings=(Ordering(Col.START_DATE, Col.DUE_DATE),),
        ),
        Table(
            T.OUTCOME_MEASUREMENTS,
            "KPI measurements reviewed with the customer.",
            (
                _id(Col.OUTCOME_ID, "Goal identifier."),
                Column(Col.MEASURED_AT, Kind.TIMESTAMP, "When measured.", observed=True),
                Column(Col.VALUE, Kind.FLOAT, "Measured KPI value."),
            ),
            key=(Col.OUTCOME_ID, Col.MEASURED_AT),
            foreign_keys=(ForeignKey(Col.OUTCOME_ID, T.OUTCOMES, Col.OUTCOME_ID),),
        ),
    )
}

REQUIRED_TABLES: Final[tuple[str, ...]] = tuple(n for n, t in TABLES.items() if t.required)
OPTIONAL_TABLES: Final[tuple[str, ...]] = tuple(n for n, t in TABLES.items() if not t.required)


#: Ground truth written by the simulator (not an input table): the true
#: probability of churn / expansion within the horizon given the state at `as_of`.
TRUTH: Final = Table(
    "truth",
    "Simulator ground truth per account and month start.",
    (
        _account_col(),
        Column(Col.AS_OF, Kind.DATE, "Month start the probabilities are conditioned on."),
        Column(Col.HORIZON_DAYS, Kind.INT, "Horizon of the probabilities.", min_value=1),
        Column(
            Col.TRUE_CHURN_PROBABILITY,
            Kind.FLOAT,
            "P(all subscriptions end within the horizon).",
            min_value=0.0,
            max_value=1.0,
        ),
        Column(
            Col.TRUE_EXPANSION_PROBABILITY,
            Kind.FLOAT,
            "P(MRR at as_of + horizon >= 1.10 x MRR at as_of).",
            min_value=0.0,
            max_value=1.0,
        ),
    ),
    key=(Col.ACCOUNT_ID, Col.AS_OF),
)
