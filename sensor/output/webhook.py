"""Webhook sinks: generic JSON, Slack (Block Kit) and PagerDuty Events v2.

Each webhook has its own spool and delivery thread, so a slow or failing endpoint never holds up
capture or the other sinks. Slack and PagerDuty are third parties: they receive only the alert's
metadata and its redacted summary, never evidence excerpts or URLs.
"""
from __future__ import annotations

import email.utils
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import requests

from sensor import __version__
from sensor.output.documents import alert_severity, is_alert
from sensor.output.spool import Backoff, DeliveryResult, Spool, SpooledSink, SpoolItem

WebhookFormat = Literal["generic", "slack", "pagerduty"]

PAGERDUTY_SEVERITY = {"low": "info", "medium": "warning", "high": "error", "critical": "critical"}
PAGERDUTY_SUMMARY_MAX = 1024
PAGERDUTY_DEDUP_KEY_MAX = 255
SLACK_HEADER_MAX = 150
SLACK_FIELD_MAX = 2000
SLACK_SECTION_MAX = 3000
# Statuses that mean "this payload will never be accepted"; anything else non-2xx is retried,
# including 401/403/404, which are usually configuration to fix while the spool keeps the alerts.
PERMANENT_STATUSES = frozenset({400, 413, 415, 422})
THROTTLE_KEYS_MAX = 10_000
DEFAULT_BATCH_SIZE = 10
USER_AGENT = f"phi-egress-sensor/{__version__}"


def _get(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value if v is not None)
    return str(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions: names seen on the network must stay inert text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _source_host(doc: dict[str, Any]) -> str:
    return _text(_get(doc, "phi_egress.phi_host.name")) or _text(_get(doc, "source.ip"))


def _headline(doc: dict[str, Any]) -> str:
    rule = _text(_get(doc, "rule.name")) or _text(_get(doc, "rule.id")) or "PHI egress alert"
    severity = alert_severity(doc)
    return f"[{severity.upper()}] {rule}" if severity else rule


def _summary(doc: dict[str, Any]) -> str:
    return _text(_get(doc, "phi_egress.summary")) or _headline(doc)


def slack_message(doc: dict[str, Any], observer: str = "") -> dict[str, Any]:
    """A Block Kit message: header, redacted summary, the fields a responder triages on, and context."""
    vendor = _text(_get(doc, "phi_egress.vendor.name")) or _text(_get(doc, "phi_egress.vendor.id"))
    category = _text(_get(doc, "phi_egress.vendor.category"))
    baa = _text(_get(doc, "phi_egress.baa.status"))
    stance = _text(_get(doc, "phi_egress.baa.stance"))
    fields = [
        ("Rule", _text(_get(doc, "rule.id"))),
        ("Severity", alert_severity(doc) or ""),
        ("Source host", _source_host(doc)),
        ("Destination", _text(_get(doc, "destination.domain")) or _text(_get(doc, "destination.ip"))),
        ("Vendor", f"{vendor} ({category})" if vendor and category else vendor),
        ("BAA status", f"{baa}: {stance}" if baa and stance else baa),
        ("PHI types", _text(_get(doc, "phi_egress.phi.types"))),
        ("Occurrences", _text(_get(doc, "phi_egress.count"))),
    ]
    context = [
        f"{label} {value}"
        for label, value in (
            ("observer", _text(_get(doc, "observer.name")) or observer),
            ("first seen", _text(_get(doc, "phi_egress.first_seen")) or _text(_get(doc, "@timestamp"))),
            ("event.id", _text(_get(doc, "event.id"))),
        )
        if value
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(_headline(doc), SLACK_HEADER_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_slack_escape(_summary(doc)), SLACK_SECTION_MAX)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _clip(f"*{label}*\n{_slack_escape(value)}", SLACK_FIELD_MAX)}
                for label, value in fields
                if value
            ],
        },
    ]
    if not blocks[-1]["fields"]:
        blocks.pop()
    if context:
        line = _slack_escape(" · ".join(context))
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": line}]})
    return {"text": _clip(f"{_headline(doc)}: {_summary(doc)}", SLACK_SECTION_MAX), "blocks": blocks}


def pagerduty_event(doc: dict[str, Any], routing_key: str, observer: str = "") -> dict[str, Any]:
    """An Events v2 `trigger`; the alert key is the dedup key, so repeats update one incident."""
    details = {
        "rule": _text(_get(doc, "rule.id")),
        "rule_name": _text(_get(doc, "rule.name")),
        "source_ip": _text(_get(doc, "source.ip")),
        "phi_host": _text(_get(doc, "phi_egress.phi_host.name")),
        "destination": _text(_get(doc, "destination.domain")) or _text(_get(doc, "destination.ip")),
        "vendor": _text(_get(doc, "phi_egress.vendor.name")),
        "vendor_category": _text(_get(doc, "phi_egress.vendor.category")),
        "baa_status": _text(_get(doc, "phi_egress.baa.status")),
        "phi_types": _text(_get(doc, "phi_egress.phi.types")),
        "phi_categories": _text(_get(doc, "phi_egress.phi.categories")),
        "occurrences": _get(doc, "phi_egress.count"),
        "first_seen": _text(_get(doc, "phi_egress.first_seen")),
        "last_seen": _text(_get(doc, "phi_egress.last_seen")),
        "event_id": _text(_get(doc, "event.id")),
        "observer": _text(_get(doc, "observer.name")) or observer,
    }
    payload: dict[str, Any] = {
        "summary": _clip(_summary(doc), PAGERDUTY_SUMMARY_MAX),
        "source": _source_host(doc) or observer or "phi-egress-sensor",
        "severity": PAGERDUTY_SEVERITY.get(alert_severity(doc) or "low", "info"),
        "custom_details": {k: v for k, v in details.items() if v not in (None, "")},
    }
    for key, dotted in (
        ("timestamp", "@timestamp"),
        ("component", "phi_egress.vendor.name"),
        ("group", "rule.id"),
        ("class", "rule.category"),
    ):
        value = _text(_get(doc, dotted))
        if value:
            payload[key] = value
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "payload": payload,
        "client": "phi-egress-sensor",
    }
    dedup = _text(_get(doc, "phi_egress.alert_key")) or _text(_get(doc, "event.id"))
    if dedup:
        event["dedup_key"] = _clip(dedup, PAGERDUTY_DEDUP_KEY_MAX)
    return event


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: either delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    current = time.time() if now is None else now
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - current)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivered: bool = False
    permanent: bool = False
    retry_after: float | None = None
    problem: str | None = None


class WebhookSink(SpooledSink):
    """POSTs each alert (one request per alert, in order) as generic JSON, Slack or PagerDuty."""

    def __init__(
        self,
        name: str,
        spool: Spool,
        url: str,
        *,
        format: WebhookFormat = "generic",
        routing_key: str | None = None,
        observer: str = "",
        auth_header: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        verify: bool | str = True,
        timeout: float = 10.0,
        throttle_seconds: float = 0.0,
        min_severity: str | None = None,
        events: bool = False,
        backoff: Backoff = Backoff(),
    ) -> None:
        if format == "pagerduty" and not routing_key:
            raise ValueError("a PagerDuty webhook needs a routing key")
        self._url = url
        self._format = format
        self._routing_key = routing_key
        self._observer = observer
        self._timeout = timeout
        self._throttle_seconds = throttle_seconds
        self._last_sent: OrderedDict[str, float] = OrderedDict()
        self._session = requests.Session()
        self._session.verify = verify
        self._session.headers["User-Agent"] = USER_AGENT
        if auth_header:
            self._session.headers["Authorization"] = auth_header
        if basic_auth:
            self._session.auth = basic_auth
        super().__init__(
            name,
            spool,
            min_severity=min_severity,
            events=events,
            batch_size=DEFAULT_BATCH_SIZE,
            backoff=backoff,
        )
        self._counters.add("throttled", 0)

    def __repr__(self) -> str:
        # The URL of a Slack webhook is its secret: never show it.
        return f"WebhookSink(name={self.name!r}, format={self._format!r})"

    def _wants(self, doc: dict[str, Any]) -> bool:
        if not super()._wants(doc):
            return False
        if self._throttle_seconds <= 0 or not is_alert(doc):
            return True
        key = _text(_get(doc, "phi_egress.alert_key"))
        if not key:
            return True
        now = time.monotonic()
        last = self._last_sent.get(key)
        if last is not None and now - last < self._throttle_seconds:
            self._counters.add("throttled")
            return False
        self._last_sent[key] = now
        self._last_sent.move_to_end(key)
        while self._last_sent:
            oldest_key, oldest = next(iter(self._last_sent.items()))
            if now - oldest < self._throttle_seconds and len(self._last_sent) <= THROTTLE_KEYS_MAX:
                break
            del self._last_sent[oldest_key]
        return True

    def payload(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self._format == "slack":
            return slack_message(doc, self._observer)
        if self._format == "pagerduty":
            assert self._routing_key is not None  # checked in __init__
            return pagerduty_event(doc, self._routing_key, self._observer)
        return doc

    def _post(self, doc: dict[str, Any]) -> _Outcome:
        try:
            response = self._session.post(
                self._url, json=self.payload(doc), timeout=self._timeout, allow_redirects=False
            )
        except requests.Timeout:
            return _Outcome(problem="timeout")
        except requests.RequestException as exc:
            return _Outcome(problem=type(exc).__name__)
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return _Outcome(delivered=True)
            if status in PERMANENT_STATUSES:
                return _Outcome(permanent=True, problem=f"HTTP {status}")
            return _Outcome(
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                problem=f"HTTP {status}",
            )

    def _deliver(self, batch: list[SpoolItem]) -> DeliveryResult:
        delivered: list[int] = []
        rejected: list[int] = []
        problem = None
        for item in batch:
            outcome = self._post(item.doc)
            if outcome.delivered:
                delivered.append(item.seq)
            elif outcome.permanent:
                rejected.append(item.seq)
                problem = outcome.problem
            else:
                # Stop at the first retryable failure so alerts keep their order.
                return DeliveryResult(delivered, rejected, retry_after=outcome.retry_after, problem=outcome.problem)
        return DeliveryResult(delivered, rejected, problem=problem)

    def _close_transport(self) -> None:
        self._session.close()
