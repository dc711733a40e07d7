"""Elasticsearch sink: bulk writes keyed by the alert's deterministic id, drained from the disk spool.

Writes keyed by an id are idempotent, so a retry after an ambiguous failure (connection lost after
the server indexed the batch) duplicates nothing: the server answers 409, which counts as delivered.
An alert is indexed with external versioning on `phi_egress.count`: the update the detector sends
when a throttle window closes (same id, higher count) replaces the first version, and a stale or
repeated version is refused. Documents without an id, or bound for a data stream (which takes
`create` only), are written with `create`.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from elastic_transport import TransportError
from elasticsearch import Elasticsearch
from elasticsearch.helpers import streaming_bulk

from sensor.output.sinks import is_alert
from sensor.output.spool import Backoff, DeliveryResult, Spool, SpooledSink, SpoolItem

DEFAULT_INDEX_PREFIX = "phi-sensor"
DEFAULT_BATCH_SIZE = 500
MAX_CHUNK_BYTES = 5 * 1024 * 1024
# Item statuses that no retry can fix: the document itself is unacceptable (e.g. a mapping conflict).
PERMANENT_STATUSES = frozenset({400, 413, 422})
CONFLICT = 409

_DAY = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")


def index_name(doc: dict[str, Any], prefix: str = DEFAULT_INDEX_PREFIX, *, data_stream: bool = False) -> str:
    """`<prefix>-alerts-YYYY.MM.DD` from the document's @timestamp (UTC day), or the data stream name."""
    kind = "alerts" if is_alert(doc) else "events"
    if data_stream:
        return f"{prefix}-{kind}-default"
    stamp = doc.get("@timestamp")
    day = _DAY.match(stamp) if isinstance(stamp, str) else None
    if day:
        return f"{prefix}-{kind}-{day[1]}.{day[2]}.{day[3]}"
    return f"{prefix}-{kind}-{datetime.now(timezone.utc):%Y.%m.%d}"


def bulk_action(doc: dict[str, Any], prefix: str, *, data_stream: bool) -> dict[str, Any]:
    action: dict[str, Any] = {
        "_op_type": "create",
        "_index": index_name(doc, prefix, data_stream=data_stream),
        "_source": doc,
    }
    event = doc.get("event")
    doc_id = event.get("id") if isinstance(event, dict) else None
    if not isinstance(doc_id, str) or not doc_id:
        return action
    action["_id"] = doc_id
    phi = doc.get("phi_egress")
    count = phi.get("count") if isinstance(phi, dict) else None
    if not data_stream and is_alert(doc) and type(count) is int and count >= 1:
        action.update(_op_type="index", _version=count, _version_type="external")
    return action


def _problem(status: Any, error: Any) -> str:
    """A short reason safe to log: error type and status only, never the server's reason text,
    which may quote field values from the document."""
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        return f"{error['type']} ({status})"
    if isinstance(status, int):
        return f"HTTP {status}"
    return "no response"


def _summary(problems: Counter[str]) -> str | None:
    return ", ".join(f"{n} x {what}" for what, n in problems.most_common(3)) or None


def elasticsearch_client(
    url: str,
    *,
    api_key: str | tuple[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
    ca_file: Path | None = None,
    verify: bool = True,
    timeout: float = 10.0,
) -> Elasticsearch:
    """A client that never retries by itself: retries, backoff and ordering belong to the sink."""
    options: dict[str, Any] = {
        "request_timeout": timeout,
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": verify,
    }
    if not verify:
        options["ssl_show_warn"] = False
    if ca_file is not None:
        options["ca_certs"] = str(ca_file)
    if api_key is not None:
        options["api_key"] = api_key
    if basic_auth is not None:
        options["basic_auth"] = basic_auth
    return Elasticsearch(url, **options)


class ElasticsearchSink(SpooledSink):
    """Ships documents to dated indices (or a data stream) with bulk `create` requests."""

    transport_errors: tuple[type[Exception], ...] = (TransportError,)

    def __init__(
        self,
        name: str,
        spool: Spool,
        client: Any,
        *,
        index_prefix: str = DEFAULT_INDEX_PREFIX,
        data_stream: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_severity: str | None = None,
        events: bool = False,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._client = client
        self._index_prefix = index_prefix
        self._data_stream = data_stream
        super().__init__(
            name, spool, min_severity=min_severity, events=events, batch_size=batch_size, backoff=backoff
        )

    def _bulk(self, actions: Iterable[dict[str, Any]]) -> Iterator[tuple[bool, dict[str, Any]]]:
        return streaming_bulk(
            self._client,
            actions,
            chunk_size=self._batch_size,
            max_chunk_bytes=MAX_CHUNK_BYTES,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=0,
        )

    def _deliver(self, batch: list[SpoolItem]) -> DeliveryResult:
        actions = [bulk_action(item.doc, self._index_prefix, data_stream=self._data_stream) for item in batch]
        delivered: list[int] = []
        rejected: list[int] = []
        duplicates = 0
        problems: Counter[str] = Counter()
        answered = 0
        try:
            # The helper yields exactly one result per action, in order.
            for position, (ok, info) in enumerate(self._bulk(actions)):
                answered = position + 1
                seq = batch[position].seq
                detail = next(iter(info.values()), {}) if isinstance(info, dict) else {}
                status = detail.get("status")
                if ok:
                    delivered.append(seq)
                elif status == CONFLICT:
                    delivered.append(seq)
                    duplicates += 1
                else:
                    problems[_problem(status, detail.get("error"))] += 1
                    # A whole-request failure carries the exception: only per-item verdicts are final,
                    # and of those every 4xx but a timeout or a throttle (the document itself, or an
                    # index that refuses it): to the dead-letter file, not retried forever.
                    if "exception" not in detail and isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                        rejected.append(seq)
        except self.transport_errors as exc:
            problems[type(exc).__name__] += len(batch) - answered
        return DeliveryResult(delivered, rejected, duplicates, problem=_summary(problems))

    def _close_transport(self) -> None:
        self._client.close()
