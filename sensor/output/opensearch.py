"""OpenSearch sink: the Elasticsearch sink's logic over opensearch-py (classic dated indices by
default; data streams when configured and the server has them).

The official Elasticsearch 9 client sends `application/vnd.elasticsearch+json; compatible-with=9`
and insists on an `X-Elastic-Product` response header; OpenSearch accepts neither, so the wire
client differs while indices, ids, retries and the spool stay the same.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import OpenSearchException
from opensearchpy.helpers import streaming_bulk

from sensor.output.elasticsearch import MAX_CHUNK_BYTES, ElasticsearchSink


def opensearch_client(
    url: str,
    *,
    basic_auth: tuple[str, str] | None = None,
    ca_file: Path | None = None,
    verify: bool = True,
    timeout: float = 10.0,
) -> OpenSearch:
    """A client that never retries by itself: retries, backoff and ordering belong to the sink."""
    options: dict[str, Any] = {
        "timeout": timeout,
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": verify,
        "ssl_show_warn": verify,
    }
    if ca_file is not None:
        options["ca_certs"] = str(ca_file)
    if basic_auth is not None:
        options["http_auth"] = basic_auth
    return OpenSearch([url], **options)


class OpenSearchSink(ElasticsearchSink):
    """Same indices and delivery rules as `ElasticsearchSink`, spoken through opensearch-py."""

    # opensearch-py reports connection failures per item when raise_on_exception is off;
    # anything else it raises (serialisation, configuration) derives from OpenSearchException.
    transport_errors = (OpenSearchException,)

    def _ready(self) -> str | None:
        return None  # no compatibility header to settle: opensearch-py speaks plain JSON

    def _replace(self, index: str, doc_id: str, doc: dict[str, Any], seq_no: int, primary_term: int) -> None:
        self._client.index(index=index, id=doc_id, body=doc, params={"if_seq_no": seq_no, "if_primary_term": primary_term})

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
