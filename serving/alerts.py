"""Alerts to CSM tools after `cshealth score`: which accounts, payloads, signed delivery.

Selection (`select_alerts`) compares a run with the previous one:

* band worsened: green → yellow or red, yellow → red (`alerts.on_band_worsened`);
* churn probability crossed `alerts.churn_probability_above` upwards: below it before
  and at or above it now — or an account first seen in this run already above it. On a
  store's first run (no previous run at all) nothing crossed: no alert, it is the baseline.

The most at-risk first (churn probability, then lowest health), at most `max_alerts`;
the rest are counted, not sent.

Delivery (`deliver`) POSTs each alert to every webhook with

* ``Content-Type: application/json``;
* ``X-CSHealth-Timestamp``: Unix seconds of the attempt;
* ``X-CSHealth-Signature: sha256=<hex>``: HMAC-SHA256 with the secret over
  ``<timestamp>.<body bytes>`` (the timestamp lets a receiver refuse replays;
  `verify` is the receiver's check);
* ``Idempotency-Key: <run_id>:<account_id>``: the same on every retry and re-send.

Retries: on 5xx, 429 (honouring ``Retry-After`` up to `MAX_RETRY_AFTER_S`), timeouts and
connection errors, waiting `backoff_s`, then twice that, ...; never on other 4xx or a
redirect (not followed: a POST would turn into a GET). After `BREAKER` alerts in a row
fail at a webhook for want of an answer (down, timing out), its other alerts of the run
are not tried (recorded failed with 0 attempts): a dead endpoint does not hold the run
for max_attempts x timeout per alert. `ScoreStore.delivered` makes re-sends idempotent:
pairs (account, webhook) delivered for the run are skipped. Webhook URLs may hold tokens:
they are logged as ``scheme://host/…`` plus a fingerprint, and stored as the fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cshealth.errors import UserError, one_line
from serving.settings import AlertParams

log = logging.getLogger(__name__)

BAND_RANK = {"green": 0, "yellow": 1, "red": 2}
SIGNATURE_HEADER = "X-CSHealth-Signature"
TIMESTAMP_HEADER = "X-CSHealth-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: longest wait a 429's Retry-After may ask for (seconds)
MAX_RETRY_AFTER_S = 30.0
#: alerts in a row failing at a webhook without an answer before it is given up for the run
BREAKER = 3
#: reasons and plays put in a payload
TOP = 3
USER_AGENT = "cshealth-alerts/1"

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Alert:
    """One account to alert about: the scored item and why."""

    run_id: str
    item: dict[str, Any]
    why: tuple[str, ...]  # "band_worsened", "churn_probability_above"
    band_before: str | None = None
    churn_probability_before: float | None = None

    @property
    def account_id(self) -> str:
        return str(self.item["account_id"])

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.account_id}"


@dataclass(frozen=True)
class Selection:
    """The alerts to send (most at-risk first) and how many the cap left out."""

    alerts: list[Alert]
    over_cap: int = 0


@dataclass
class DeliverySummary:
    """What `deliver` did; counts are deliveries (alert x webhook)."""

    selected: int = 0
    over_cap: int = 0
    webhooks: int = 0
    delivered: int = 0
    failed: int = 0
    already: int = 0  # delivered by an earlier send of the run: skipped
    not_recorded: int = 0  # sent, but the store could not record it
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # a few, for the summary

    def line(self) -> str:
        """E.g. "alerts: 12 selected, 12 delivered to 1 webhook, 0 failed; 3 over max_alerts"."""
        s = "" if self.webhooks == 1 else "s"
        text = (f"alerts: {self.selected} selected, {self.delivered} delivered to "
                f"{self.webhooks} webhook{s}, {self.failed} failed")  # fmt: skip
        extra = [f"{self.already} already delivered"] if self.already else []
        if self.over_cap:
            extra.append(f"{self.over_cap} over max_alerts")
        if self.not_recorded:
            extra.append(f"{self.not_recorded} not recorded in the store")
        if self.errors:
            extra.append("first error: " + self.errors[0])
        return text + ("; " + "; ".join(extra) if extra else "")


# ----- selection ------------------------------------------------------------------------------
def select_alerts(
    items: Sequence[Mapping[str, Any]],
    previous: Mapping[str, Mapping[str, Any]] | None,
    params: AlertParams,
    run_id: str | None = None,
) -> Selection:
    """The accounts of `items` (one run's scores) to alert about, against `previous`.

    `previous`: the previous run's scores per account id (band, churn_probability);
    None when there was no previous run. An item's ``changes.band_before`` stands in
    for a missing previous score's band. `run_id` defaults to the items' own.
    """
    picked = []
    for item in items:
        before = (previous or {}).get(str(item["account_id"]))
        band_before = (before or {}).get("band") or (item.get("changes") or {}).get("band_before")
        p_before = None if before is None else before.get("churn_probability")
        why = []
        if (
            params.on_band_worsened
            and band_before in BAND_RANK
            and (BAND_RANK.get(str(item["band"]), -1) > BAND_RANK[band_before])
        ):
            why.append("band_worsened")
        limit = params.churn_probability_above
        p = float(item["churn_probability"])
        # crossed: below before, or first seen above (not on a store's first run)
        if (
            limit is not None
            and previous is not None
            and p >= limit
            and (before is None or (p_before is not None and float(p_before) < limit))
        ):
            why.append("churn_probability_above")
        if why:
            rid = run_id or str(item.get("run_id") or "")
            picked.append(Alert(rid, dict(item), tuple(why), band_before,
                                None if p_before is None else float(p_before)))  # fmt: skip
    picked.sort(key=lambda a: (-float(a.item["churn_probability"]),
                               float(a.item["health_score"]), a.account_id))  # fmt: skip
    cap = params.max_alerts
    return Selection(picked[:cap], max(0, len(picked) - cap))


# ----- payloads -------------------------------------------------------------------------------
def why_text(alert: Alert, params: AlertParams) -> str:
    """The trigger in words, e.g. "band yellow → red; churn probability 0.41 ≥ 0.30"."""
    parts = []
    if "band_worsened" in alert.why:
        parts.append(f"band {alert.band_before} → {alert.item['band']}")
    if "churn_probability_above" in alert.why:
        p, limit = float(alert.item["churn_probability"]), params.churn_probability_above or 0
        before = alert.churn_probability_before
        was = "new account" if before is None else f"was {before:.2f}"
        parts.append(f"churn probability {p:.2f} ≥ {limit:.2f} ({was})")
    return "; ".join(parts)


def json_payload(alert: Alert, params: AlertParams, as_of: str | None = None) -> dict[str, Any]:
    """The alert as a JSON object (format "json")."""
    it = alert.item
    return {
        "type": "cshealth.account_alert", "version": 1,
        "idempotency_key": alert.idempotency_key, "run_id": alert.run_id,
        "as_of": str(it.get("as_of") or as_of or "")[:10] or None,
        "account_id": alert.account_id, "name": it.get("name"), "segment": it.get("segment"),
        "csm_id": it.get("csm_id"), "band": it["band"], "band_before": alert.band_before,
        "health_score": _round(it.get("health_score"), 1),
        "health_change": _round(it.get("health_change"), 1),
        "churn_probability": _round(it.get("churn_probability"), 4),
        "churn_probability_before": _round(alert.churn_probability_before, 4),
        "why": list(alert.why), "why_text": why_text(alert, params),
        "changes": (it.get("changes") or {}).get("sentence"),
        "reasons": [{"feature": r.get("feature"), "sentence": r.get("sentence"),
                     "impact": r.get("impact")} for r in (it.get("reasons") or [])[:TOP]],
        "plays": [{"play": p.get("play"), "description": p.get("description")}
                  for p in (it.get("plays") or [])[:TOP]],
    }  # fmt: skip


def slack_payload(alert: Alert, params: AlertParams, as_of: str | None = None) -> dict[str, Any]:
    """The alert as a Slack-compatible message: `text` (fallback) and `blocks`."""
    d = json_payload(alert, params, as_of)
    who = _esc(d["name"] or d["account_id"])
    text = (f"{_BAND_ICON.get(d['band'], '')} {who} ({_esc(d['account_id'])}) is "
            f"{d['band']}: {_esc(d['why_text'])}").strip()  # fmt: skip
    change = "" if d["health_change"] is None else f" ({d['health_change']:+.1f})"
    fields = [
        f"*Health*\n{d['health_score']}{change}", f"*Churn probability*\n{d['churn_probability']}",
        f"*Band*\n{d['band_before'] or '–'} → {d['band']}",
        f"*CSM*\n{_esc(d['csm_id'] or '–')}", f"*Segment*\n{_esc(d['segment'] or '–')}",
        f"*As of*\n{d['as_of'] or '–'}",
    ]  # fmt: skip
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if d["reasons"]:
        lines = "\n".join(f"• {_esc(r['sentence'] or r['feature'])}" for r in d["reasons"])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Why*\n{lines}"}})
    if d["plays"]:
        lines = "\n".join(f"• *{_esc(p['play'])}*: {_esc(p['description'] or '')}"
                          for p in d["plays"])  # fmt: skip
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Plays*\n{lines}"}})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"cshealth run {d['run_id']} · {d['idempotency_key']}"}
            ],
        }
    )
    return {"text": text, "blocks": blocks}


def body(alert: Alert, params: AlertParams, as_of: str | None = None) -> bytes:
    """The exact bytes POSTed (and signed) for `params.format`."""
    build = slack_payload if params.format == "slack" else json_payload
    return json.dumps(build(alert, params, as_of), ensure_ascii=False,
                      separators=(",", ":")).encode()  # fmt: skip


_BAND_ICON = {"red": ":red_circle:", "yellow": ":large_yellow_circle:", "green": ""}


def _esc(text: Any) -> str:
    """Text for Slack mrkdwn (`&`, `<`, `>` escaped: no injected links or mentions)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _round(x: Any, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


# ----- signing and webhooks -------------------------------------------------------------------
def sign(secret: str | bytes, body: bytes, timestamp: str | int | None = None) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of `body`, of ``<timestamp>.<body>`` with a timestamp."""
    key = secret.encode() if isinstance(secret, str) else secret
    message = body if timestamp is None else f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, headers: Mapping[str, str],
           max_age_s: float | None = 300.0, now: float | None = None) -> bool:  # fmt: skip
    """A receiver's check of a request's signature (and, with `max_age_s`, its freshness).

    Header names are matched case-insensitively (urllib sends ``X-cshealth-signature``).
    """
    headers = {k.lower(): v for k, v in headers.items()}
    stamp = headers.get(TIMESTAMP_HEADER.lower(), "")
    if not stamp.isdigit():
        return False
    if max_age_s is not None and abs((now or time.time()) - int(stamp)) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, body, stamp), headers.get(SIGNATURE_HEADER.lower(), ""))


def headers(alert: Alert, secret: str, payload: bytes, now: float | None = None) -> dict[str, str]:
    """The request headers of one attempt (signed at its own timestamp)."""
    stamp = str(int(now if now is not None else time.time()))
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
            TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, payload, stamp),
            IDEMPOTENCY_HEADER: alert.idempotency_key}  # fmt: skip


def fingerprint(url: str) -> str:
    """A stable short id of a webhook URL (what the store keeps; the URL may hold a token)."""
    return hashlib.sha256(url.strip().encode()).hexdigest()[:16]


def shown(url: str) -> str:
    """A webhook URL safe to log: ``scheme://host[:port]/…`` and its fingerprint."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"<invalid URL> [{fingerprint(url)}]"
    return f"{parts.scheme}://{host}{port}/… [{fingerprint(url)}]"


def check_webhooks(urls: Sequence[str], secret: str | None) -> None:
    """UserError (one line) when webhooks are set without a secret or are not http(s) URLs."""
    if not urls:
        return
    if not secret:
        raise UserError("CSHEALTH_ALERT_WEBHOOKS is set but CSHEALTH_ALERT_SECRET is not: set "
                        "the secret alerts are signed with (or unset the webhooks)")  # fmt: skip
    for n, url in enumerate(urls, 1):
        try:
            parts = urllib.parse.urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # a bad port raises
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"CSHEALTH_ALERT_WEBHOOKS: webhook {n} is not an http(s) URL "
                            f"({shown(url).split(' ')[0]})")  # fmt: skip


# ----- sending --------------------------------------------------------------------------------
@dataclass
class Attempts:
    """How sending one alert to one webhook went."""

    ok: bool
    attempts: int
    http_status: int | None = None
    error: str | None = None
    answered: bool = True  # False: no HTTP answer at all (down, timeout)
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None


class Answer(NamedTuple):
    """An HTTP answer: its status and Retry-After header."""

    status: int
    retry_after: str | None = None


Poster = Callable[[str, bytes, Mapping[str, str], float], Answer]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed (urllib would re-send a POST as a GET)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def post(url: str, payload: bytes, hdrs: Mapping[str, str], timeout_s: float) -> Answer:
    """POST once: the HTTP status (4xx/5xx included) and Retry-After header.

    Raises OSError (refused, reset, timeout, DNS) when nothing answers.
    """
    req = urllib.request.Request(url, data=payload, headers=dict(hdrs), method="POST")
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            resp.read(65536)
            return Answer(int(resp.status))
    except urllib.error.HTTPError as err:
        after = err.headers.get("Retry-After") if err.headers else None
        err.close()
        return Answer(int(err.code), after)


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


def send(
    url: str,
    alert: Alert,
    payload: bytes,
    secret: str,
    params: AlertParams,
    sleep: Sleep = time.sleep,
    poster: Poster = post,
) -> Attempts:
    """POST `payload` with retries and exponential backoff; never raises for delivery."""
    result = Attempts(ok=False, attempts=0, first_at=_now())
    delay = params.backoff_s
    for attempt in range(1, params.max_attempts + 1):
        result.attempts, result.last_at = attempt, _now()
        try:
            answer = poster(url, payload, headers(alert, secret, payload), params.timeout_s)
        except (OSError, ValueError) as err:  # refused, reset, timeout, DNS, bad URL
            result.http_status, result.answered = None, False
            result.error = _reason(err)
            if isinstance(err, ValueError):
                return result
        else:
            status = answer.status
            result.http_status, result.answered = status, True
            if 200 <= status < 300:
                result.ok, result.error = True, None
                return result
            result.error = f"HTTP {status}"
            if not retryable(status):
                return result
        if attempt < params.max_attempts:
            after = answer.retry_after if result.http_status == 429 else None
            sleep(_wait(after, delay))
            delay *= 2
    return result


def _wait(after: str | None, delay: float) -> float:
    """The backoff delay, or a 429's Retry-After (seconds) when longer, capped."""
    try:
        asked = float(after) if after else 0.0
    except ValueError:  # an HTTP date: keep the backoff
        asked = 0.0
    return max(delay, min(asked, MAX_RETRY_AFTER_S))


def _reason(err: BaseException) -> str:
    """E.g. "ConnectionRefusedError: [Errno 111] Connection refused": the cause of a
    URLError (its text never holds the URL, which may hold a token), short."""
    reason = getattr(err, "reason", None)
    cause = reason if isinstance(reason, BaseException) else err
    text = str(reason if reason is not None else err)
    return one_line(f"{type(cause).__name__}: {text}", 200)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def deliver(
    store: Any,
    run_id: str,
    alerts: Selection | Sequence[Alert],
    urls: Sequence[str],
    secret: str,
    params: AlertParams,
    *,
    as_of: str | None = None,
    sleep: Sleep = time.sleep,
    poster: Poster = post,
) -> DeliverySummary:
    """Send each alert to each webhook not yet delivered for `run_id`; record every try.

    `store`: a `ScoreStore` (`delivered`, `record_deliveries`). Delivery problems never
    raise: they are recorded and counted. A store that cannot record is logged and
    counted (the alert was still sent; a re-send may repeat it: receivers dedupe on
    Idempotency-Key). Reading what was delivered before may raise `StoreError`.
    """
    t0 = time.perf_counter()
    selection = alerts if isinstance(alerts, Selection) else Selection(list(alerts))
    summary = DeliverySummary(selected=len(selection.alerts), over_cap=selection.over_cap,
                              webhooks=len(urls))  # fmt: skip
    if not selection.alerts or not urls:
        return summary
    hooks = [(u, fingerprint(u)) for u in urls]
    done = store.delivered(run_id)
    silent = {fp: 0 for _, fp in hooks}  # alerts in a row without an answer
    for alert in selection.alerts:
        payload = body(alert, params, as_of)
        rows = []
        for url, fp in hooks:
            if (alert.account_id, fp) in done:
                summary.already += 1
                continue
            if silent[fp] >= BREAKER:
                got = Attempts(
                    ok=False,
                    attempts=0,
                    answered=False,
                    error=f"not tried: webhook down for {BREAKER} alerts in a row",
                )
            else:
                got = send(url, alert, payload, secret, params, sleep, poster)
                silent[fp] = 0 if got.answered else silent[fp] + 1
                if silent[fp] == BREAKER:
                    log.warning("alerts: %s did not answer %d alerts in a row; not trying it "
                                "again in run %s", shown(url), BREAKER, run_id)  # fmt: skip
            rows.append(_row(run_id, alert, fp, got))
            if got.ok:
                summary.delivered += 1
            else:
                summary.failed += 1
                if len(summary.errors) < 3:
                    summary.errors.append(f"{alert.account_id} → {shown(url)}: {got.error}")
                log.warning("alerts: %s to %s failed after %d attempts: %s", alert.account_id,
                            shown(url), got.attempts, got.error)  # fmt: skip
        _record(store, rows, summary)
    summary.seconds = round(time.perf_counter() - t0, 3)
    log.info("%s (%.2f s)", summary.line(), summary.seconds)
    return summary


def _row(run_id: str, alert: Alert, webhook: str, got: Attempts) -> dict[str, Any]:
    return {"run_id": run_id, "account_id": alert.account_id, "webhook": webhook,
            "status": "delivered" if got.ok else "failed", "attempts": got.attempts,
            "http_status": got.http_status, "error": (got.error or None) and got.error[:300],
            "first_attempt_at": got.first_at, "last_attempt_at": got.last_at,
            "delivered_at": got.last_at if got.ok else None}  # fmt: skip


def _record(store: Any, rows: list[dict[str, Any]], summary: DeliverySummary) -> None:
    """Record one alert's deliveries (each alert at once: a crash loses at most one)."""
    if not rows:
        return
    try:
        store.record_deliveries(rows)
    except UserError as err:  # StoreError: the alert went out; say so and carry on
        summary.not_recorded += len(rows)
        log.warning("alerts: could not record %d deliveries: %s", len(rows), err)


def previous_scores(store: Any, items: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The previous run's scores per account, from the items' ``changes.previous_run_id``.

    None when no item names a previous run (the store's first run, or no account shared).
    """
    ids = {(i.get("changes") or {}).get("previous_run_id") for i in items} - {None}
    if not ids:
        return None
    out: dict[str, Any] = {}
    for rid in sorted(ids):  # one in practice: the run committed just before
        out.update({s["account_id"]: s for s in store.run_scores(rid)})
    return out


def alert_run(
    store: Any,
    run_id: str,
    urls: Sequence[str],
    secret: str,
    params: AlertParams,
    *,
    sleep: Sleep = time.sleep,
) -> DeliverySummary:
    """Select a stored run's alerts against its previous run and deliver them (idempotent)."""
    items = store.run_scores(run_id)
    if not items:
        raise UserError(f"no scores for run {run_id!r} in the score store {store!r}; see the "
                        "run ids of `cshealth score` output")  # fmt: skip
    selection = select_alerts(items, previous_scores(store, items), params, run_id)
    return deliver(store, run_id, selection, urls, secret, params,
                   as_of=str(items[0].get("as_of")), sleep=sleep)  # fmt: skip
