"""Elasticsearch sink: bulk writes keyed by the alert's deterministic id, drained from the disk spool.

Elasticsearch 8 and 9 alike: before its first write the sink asks the server its version (`GET /`)
and speaks the REST compatibility version both understand (client 9 against server 8 sends
`compatible-with=8`); a server that refuses (401, 403, 406, an answer that is not Elasticsearch)
is named in one line and the documents wait in the spool.

Data streams (the default for Elasticsearch): documents go to `logs-<data_stream.dataset>-<namespace>`
with `create` and the alert's `event.id` as `_id`. A re-sent alert under the same id answers 409,
which counts as delivered. When the re-sent version is stronger than the stored one (a higher
severity, or the final count of its throttle window), it then replaces the stored one in its backing
index, conditional on the stored version (`if_seq_no`/`if_primary_term`), the way Elasticsearch
updates a data stream's document; without the privileges for that, the first version stands.

Classic indices (`data_stream: false`, the default for OpenSearch): dated `<prefix>-alerts-*` and
`<prefix>-events-*` indices. Writes keyed by an id are idempotent, so a retry after an ambiguous
failure (connection lost after the server indexed the batch) duplicates nothing: the server answers
409, which counts as delivered. An alert is indexed with external versioning on
`phi_egress.count`: the update the detector sends when a throttle window closes (same id, higher
count) replaces the first version, and a stale or repeated version is refused. Documents without an
id are written with `create`.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from elastic_transport import HttpHeaders, SerializationError, TransportError, Urllib3HttpNode
from elastic_transport.client_utils import DEFAULT
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError
from elasticsearch import __versionstr__ as CLIENT_VERSION
from elasticsearch.helpers import streaming_bulk

from sensor.output.documents import is_alert, severity_rank
from sensor.output.ecs import ALERT_DATASET, DATA_STREAM_TYPE, DEFAULT_NAMESPACE, EVENT_DATASETS, MODULE
from sensor.output.spool import Backoff, DeliveryResult, Spool, SpooledSink, SpoolItem

log = logging.getLogger(__name__)

DEFAULT_INDEX_PREFIX = "phi-sensor"
DEFAULT_BATCH_SIZE = 500
MAX_CHUNK_BYTES = 5 * 1024 * 1024
CONFLICT = 409
# The Elasticsearch majors this sink speaks to (REST compatibility reaches one major back).
SUPPORTED_MAJORS = (8, 9)
CLIENT_MAJOR = int(CLIENT_VERSION.partition(".")[0])

_DAY = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")
# What Elasticsearch accepts in a data stream's dataset and namespace: lowercase, no '-'.
_STREAM_PART = re.compile(r"^[a-z0-9_.]{1,100}$")


def stream_dataset(doc: dict[str, Any]) -> str:
    """The dataset a document belongs to: its `data_stream.dataset`, else what its kind implies."""
    stream = doc.get("data_stream")
    dataset = stream.get("dataset") if isinstance(stream, dict) else None
    if isinstance(dataset, str) and _STREAM_PART.match(dataset):
        return dataset
    if is_alert(doc):
        return ALERT_DATASET
    event = doc.get("event")
    legacy = event.get("dataset") if isinstance(event, dict) else None  # documents spooled by older versions
    if isinstance(legacy, str) and _STREAM_PART.match(legacy):
        return legacy if legacy.startswith(MODULE + ".") else EVENT_DATASETS.get(legacy, f"{MODULE}.{legacy}")
    return f"{MODULE}.events"


def stream_name(dataset: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{DATA_STREAM_TYPE}-{dataset}-{namespace}"


def index_name(
    doc: dict[str, Any],
    prefix: str = DEFAULT_INDEX_PREFIX,
    *,
    data_stream: bool = False,
    namespace: str = DEFAULT_NAMESPACE,
) -> str:
    """`<prefix>-alerts-YYYY.MM.DD` from the document's @timestamp (UTC day), or the data stream name
    `logs-<dataset>-<namespace>`."""
    if data_stream:
        return stream_name(stream_dataset(doc), namespace)
    kind = "alerts" if is_alert(doc) else "events"
    stamp = doc.get("@timestamp")
    day = _DAY.match(stamp) if isinstance(stamp, str) else None
    if day:
        return f"{prefix}-{kind}-{day[1]}.{day[2]}.{day[3]}"
    return f"{prefix}-{kind}-{datetime.now(timezone.utc):%Y.%m.%d}"


def bulk_action(
    doc: dict[str, Any], prefix: str, *, data_stream: bool, namespace: str = DEFAULT_NAMESPACE
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "_op_type": "create",
        "_index": index_name(doc, prefix, data_stream=data_stream, namespace=namespace),
        "_source": doc,
    }
    if data_stream:
        # data_stream.* are constant per stream (constant_keyword): they must name this one
        stream = {"type": DATA_STREAM_TYPE, "dataset": stream_dataset(doc), "namespace": namespace}
        if doc.get("data_stream") != stream:
            action["_source"] = {**doc, "data_stream": stream}
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


def strength(doc: dict[str, Any]) -> tuple[int, int]:
    """How much an alert version says: severity first, then its count."""
    phi = doc.get("phi_egress")
    count = phi.get("count") if isinstance(phi, dict) else None
    return severity_rank(doc), count if type(count) is int else 0


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


class ServerRefused(Exception):
    """The server answered, but not as an Elasticsearch this sensor can write to; the message is
    one line naming what is wrong."""


@dataclass
class Compatibility:
    """The REST compatibility major the client's requests carry; None until the server is known
    (then requests go out as plain `application/json`, which every version accepts)."""

    major: int | None = None
    server: str = ""  # "Elasticsearch 8.17.0", once known


_COMPAT_VALUE = re.compile(r"application/vnd\.elasticsearch\+([a-z-]+)\s*;\s*compatible-with=\d+", re.IGNORECASE)


def _compat_headers(headers: Mapping[str, str], major: int | None) -> HttpHeaders:
    replacement = r"application/\1" if major is None else rf"application/vnd.elasticsearch+\1; compatible-with={major}"
    fixed = HttpHeaders(headers)
    for name in ("accept", "content-type"):
        value = fixed.get(name)
        if value:
            fixed[name] = _COMPAT_VALUE.sub(replacement, value)
    return fixed


def _node_class(compat: Compatibility) -> type[Urllib3HttpNode]:
    """A connection that rewrites the client's `compatible-with=<client major>` to the negotiated one."""

    class CompatibleNode(Urllib3HttpNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=DEFAULT):
            if headers:
                headers = _compat_headers(headers, compat.major)
            return super().perform_request(method, target, body, headers, request_timeout)

    return CompatibleNode


def elasticsearch_client(
    url: str,
    *,
    api_key: str | tuple[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
    ca_file: Path | None = None,
    verify: bool = True,
    timeout: float = 10.0,
) -> Elasticsearch:
    """A client that never retries by itself (retries, backoff and ordering belong to the sink) and
    speaks the compatibility version `negotiate` settles on."""
    compat = Compatibility()
    options: dict[str, Any] = {
        "request_timeout": timeout,
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": verify,
        "node_class": _node_class(compat),
    }
    if not verify:
        options["ssl_show_warn"] = False
    if ca_file is not None:
        options["ca_certs"] = str(ca_file)
    if api_key is not None:
        options["api_key"] = api_key
    if basic_auth is not None:
        options["basic_auth"] = basic_auth
    client = Elasticsearch(url, **options)
    client.phi_compat = compat  # type: ignore[attr-defined]
    return client


_REFUSALS = {
    401: "authentication failed (HTTP 401): check the API key or the user and password",
    403: "permission denied (HTTP 403): the credentials lack the privileges the sensor needs",
    406: "refused the request format (HTTP 406 Not Acceptable)",
}


def _error(body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", ""
    kind, reason = error.get("type"), error.get("reason")
    return (kind if isinstance(kind, str) else ""), (" ".join(reason.split())[:200] if isinstance(reason, str) else "")


def refusal(status: int, body: Any) -> str:
    """One line for a server's refusal of `GET /` (no document in it, so its reason is safe to show):
    what the status means for the operator, then the server's error type and reason."""
    kind, reason = _error(body)
    if kind == "media_type_header_exception":
        line = (f"refused the client's compatibility header (HTTP {status}): the elasticsearch client "
                f"{CLIENT_VERSION} and the server share no REST API version")
    else:
        line = _REFUSALS.get(status, f"answered HTTP {status}")
    detail = ": ".join(part for part in (kind, reason) if part)
    return f"{line} ({detail})" if detail else line


def negotiate(client: Elasticsearch) -> str:
    """Ask the server what it is (`GET /`) and settle the compatibility header; returns
    "Elasticsearch <version>". Raises ServerRefused with one line, or the transport's error when
    the server cannot be reached."""
    compat: Compatibility = client.phi_compat  # type: ignore[attr-defined]
    if compat.major is not None:
        return compat.server
    try:
        body = client.perform_request("GET", "/", headers={"accept": "application/json"}).body
    except UnsupportedProductError as exc:
        raise ServerRefused(_not_elasticsearch(exc.body)) from None
    except ApiError as exc:
        raise ServerRefused(refusal(exc.meta.status, exc.body)) from None
    except SerializationError:
        raise ServerRefused("does not answer as Elasticsearch (GET / gave no JSON)") from None
    version = body.get("version") if isinstance(body, dict) else None
    number = version.get("number") if isinstance(version, dict) else None
    if not isinstance(number, str) or (isinstance(version, dict) and version.get("distribution") == "opensearch"):
        raise ServerRefused(_not_elasticsearch(body))
    major_text = number.partition(".")[0]
    major = int(major_text) if major_text.isdigit() else 0
    if major not in SUPPORTED_MAJORS:
        raise ServerRefused(f"is Elasticsearch {number}; this sensor writes to Elasticsearch 8.x and 9.x")
    compat.major = min(major, CLIENT_MAJOR)
    compat.server = f"Elasticsearch {number}"
    return compat.server


def _not_elasticsearch(body: Any) -> str:
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, dict) and version.get("distribution") == "opensearch":
        return "is OpenSearch, not Elasticsearch: use opensearch=URL (setup --opensearch URL)"
    return "does not answer as Elasticsearch (no X-Elastic-Product header or version in GET /)"


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
        namespace: str = DEFAULT_NAMESPACE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_severity: str | None = None,
        events: bool = False,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._client = client
        self._index_prefix = index_prefix
        self._data_stream = data_stream
        self._namespace = namespace
        super().__init__(
            name, spool, min_severity=min_severity, events=events, batch_size=batch_size, backoff=backoff
        )

    def _bulk(self, actions: Iterable[dict[str, Any]]) -> Iterable[tuple[bool, dict[str, Any]]]:
        return streaming_bulk(
            self._client,
            actions,
            chunk_size=self._batch_size,
            max_chunk_bytes=MAX_CHUNK_BYTES,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=0,
        )

    def _ready(self) -> str | None:
        """None once the server is known to take our writes, else the problem to report."""
        try:
            negotiate(self._client)
        except ServerRefused as exc:
            return f"the server {exc}"
        except self.transport_errors as exc:
            return type(exc).__name__
        return None

    def _deliver(self, batch: list[SpoolItem]) -> DeliveryResult:
        not_ready = self._ready()
        if not_ready is not None:
            return DeliveryResult(problem=not_ready)
        actions = [
            bulk_action(item.doc, self._index_prefix, data_stream=self._data_stream, namespace=self._namespace)
            for item in batch
        ]
        delivered: list[int] = []
        rejected: list[int] = []
        duplicates = 0
        problems: Counter[str] = Counter()
        answered = 0
        conflicts: list[tuple[dict[str, Any], Any]] = []  # (action, the index that holds the document)
        try:
            # The helper yields exactly one result per action, in order.
            for position, (ok, info) in enumerate(self._bulk(actions)):
                answered = position + 1
                seq = batch[position].seq
                detail: dict[str, Any] = next(iter(info.values()), {}) if isinstance(info, dict) else {}
                status = detail.get("status")
                if ok:
                    delivered.append(seq)
                elif status == CONFLICT:
                    delivered.append(seq)
                    duplicates += 1
                    if self._data_stream:
                        conflicts.append((actions[position], detail.get("_index")))
                else:
                    problems[_problem(status, detail.get("error"))] += 1
                    # A whole-request failure carries the exception: only per-item verdicts are final,
                    # and of those every 4xx but a timeout or a throttle (the document itself, or an
                    # index that refuses it): to the dead-letter file, not retried forever.
                    if "exception" not in detail and isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                        rejected.append(seq)
        except self.transport_errors as exc:
            problems[type(exc).__name__] += len(batch) - answered
        for action, index in conflicts:
            self._supersede(action, index)
        return DeliveryResult(delivered, rejected, duplicates, problem=_summary(problems))

    def _supersede(self, action: dict[str, Any], index: Any) -> None:
        """Put a stronger version of an alert over the one a data stream holds (see the module doc).
        Best effort: the alert is delivered either way."""
        doc = action["_source"]
        if not is_alert(doc) or "_id" not in action:
            return
        refused: tuple[type[Exception], ...] = (ApiError, *self.transport_errors)
        try:
            stored = self._client.get(index=index if isinstance(index, str) else action["_index"], id=action["_id"])
            if strength(doc) <= strength(stored["_source"]):
                return
            self._replace(stored["_index"], action["_id"], doc, stored["_seq_no"], stored["_primary_term"])
        except refused as exc:
            # a concurrent update, or a key that may only create: the stored version stands
            self._counters.add("not_superseded")
            log.debug("%s: alert %s kept its stored version: %s", self.name, action["_id"], type(exc).__name__)
            return
        self._counters.add("superseded")

    def _replace(self, index: str, doc_id: str, doc: dict[str, Any], seq_no: int, primary_term: int) -> None:
        self._client.index(index=index, id=doc_id, document=doc, if_seq_no=seq_no, if_primary_term=primary_term)

    def _close_transport(self) -> None:
        self._client.close()
