"""Every entry point of the compiled extension (sensor/_fast/) and the Python it answers to.

A twin computes what its Python reference computes, faster, and declines (returns None) what it
cannot handle, so the caller falls back to the reference; tests hold each pair equal. A binder
receives facts defined in Python (record classes, name tables, port tables, the JSON encoder) so
the C code copies none of them. tests/test_compiled_table.py fails for any exported entry point
missing here and for any reference that does not import.

References are "module:qualified.name"; every twin's reference is named *_py.
"""

from __future__ import annotations

import sys

# compiled twin -> its Python reference
TWINS: dict[str, str] = {
    "record_maker": "sensor.records:positional_constructor_py",
    "parse_dns": "sensor.decode.dns:parse_message_py",
    "dns_pair": "sensor.decode.dns:DnsTransactions.on_datagram_py",
    "parse_hello": "sensor.decode.tls:parse_client_hello_message_py",
    "hello_message": "sensor.decode.tls:hello_message_py",
    "http_head": "sensor.decode.http:parse_head_py",
    "http_request": "sensor.decode.http:whole_request_py",
    "quic_crypto_chunks": "sensor.decode.quic:crypto_chunks_py",
    "quic_absorb": "sensor.decode.quic:absorb_chunks_py",
    "quic_initial_keys": "sensor.decode.quic:initial_keys_py",
    "quic_unprotect": "sensor.decode.quic:unprotect_py",
    "quic_long_header": "sensor.decode.quic:long_header_py",
    "decode_frame": "sensor.decode.packet:PacketDecoder.decode_py",
    "dns_datagram": "sensor.decode.dispatch:dns_datagram_py",
    "decode_packet": "sensor.decode.dispatch:decode_packet_py",
    # the decode it returns, which learns another replay worker's DNS answers into a cache
    "share_decoder": "sensor.decode.dispatch:shared_decode_py",
    # the decode it returns, which takes a SYN and a first ClientHello (whole, or split over in-order
    # segments) into the flow table, and an HTTP connection's next whole requests
    "handshake_decoder": "sensor.decode.dispatch:TrafficDecoder.handshake_py",
    "decode_mirrored": "sensor.decode.packet:PacketDecoder.decode_py",  # with the tunnel it records
    # the packet inside a mirror tunnel, its tunnel counted and remembered, a DNS datagram's message read
    "mirrored_found": "sensor.decode.dispatch:TrafficDecoder.declined_py",
    # the decode it returns, which hands a frame its decode declined to the tunnelled steps in the same call
    "declined_decoder": "sensor.decode.dispatch:TrafficDecoder.declined_step_py",
    # an alerts replay's loop over a batch of packets: decode, feed_found, the records to the detector
    "replay_alerts": "sensor.app.replay.files:alerts_batch_py",
    # the decode it returns, which takes a DNS datagram's message (counted, paired, learned from), and
    # a hello's record as TrafficDecoder.feed_found does
    "dns_step_decoder": "sensor.decode.dispatch:TrafficDecoder.datagram_py",
    "community_id": "sensor.output.ecs:community_id_py",
    "event_envelope": "sensor.output.ecs:EventBuilder._envelope_py",
    "dns_event_line": "sensor.output.ecs:EventBuilder.line_py",
    "tls_event_line": "sensor.output.ecs:EventBuilder.line_py",
    "event_lines": "sensor.output.ecs:EventBuilder.lines_py",
    "alert_line": "sensor.output.ecs:AlertBuilder.line_py",
    "window_event_id": "sensor.detect.engine:event_id_py",
    # on_record for an engine: a lookup or hello no rule may fire on answered, any other record handed on
    "detect_front": "sensor.detect.engine:DetectionEngine.on_record_py",
    "prune": "sensor.output.ecs:prune_py",
    "iso_time": "sensor.output.ecs:iso_time_py",
    "identifier_hints": "sensor.phi.redact:identifier_hints_py",
    "redact_query": "sensor.phi.redact:_redact_query_py",
    "plain_text": "sensor.phi.layers:_plain_py",
    "bytes_text": "sensor.phi.layers:_bytes_to_text_py",
    "peel_form": "sensor.phi.layers:Peeler.form_py",
    "peel_json": "sensor.phi.layers:Peeler.json_py",
    "term_may_occur": "sensor.phi.lexicon:TermMatcher.may_occur_py",
    "scan_fields": "sensor.phi.recognizers:scan_fields_py",
    # a request's parts peeled (each reused or peeled alone) and scanned, at scan_http's default confidence
    "scan_request": "sensor.phi.recognizers:scan_http_py",
    "gate_hints": "sensor.phi.recognizers:_gate_hints_py",
    "pcap_records": "sensor.capture.pcap:pcap_records_py",
    "select_worker": "sensor.capture.workers:worker_of_py",
    "select_route": "sensor.capture.workers:route_of_py",
    "dns_learn": "sensor.enrich.dnscache:DnsCache._learn_py",
    # what dns_learn stores of a response, read from its wire format (another replay worker's answers)
    "dns_learn_wire": "sensor.enrich.dnscache:DnsCache.learn_wire_py",
}

# compiled binder -> the Python home of what it is given
BINDERS: dict[str, str] = {
    "bind_dns": "sensor.decode.dns:TYPE_NAMES",  # with DnsMessage, DnsAnswer and RCODE_NAMES
    "bind_dns_pairs": "sensor.records:DnsQuery",  # with Flow
    "bind_handshakes": "sensor.records:TlsHello",  # with Flow and sensor.decode.tls.LEGACY_VERSIONS
    "bind_json": "orjson:dumps",  # the encoder the line writers' fields must match byte for byte
    "set_tunnel_ports": "sensor.decode.packet:udp_tunnel_ports",
    "bind_pcap": "sensor.capture.pcap:TIME_JUMP",
    "bind_hints": "sensor.phi.redact:_WORD_HINTS",  # with the bit of each family of identifier shapes
    "bind_query": "sensor.phi.redact:_query_piece",  # with _redact_part and _quoted, called back
    # with sensor.phi.layers._plain_py, _bytes_to_text_py, _PEELED, DEFAULT_LIMITS and _PEELED_CHARS
    "bind_phi": "sensor.phi.layers:_field",
    # with sensor.phi.recognizers._scan_short_field, _scan_field and _CACHED_VALUE_CHARS
    "bind_scan": "sensor.phi.recognizers:_context",
    "bind_gates": "sensor.phi.recognizers:_GATE_WORDS",  # with _gate_hints_py
    # with sensor.phi.layers._peel_alone, _peel_on, DEFAULT_LIMITS, _CACHED_PART_CHARS, _new_part,
    # _unquote, _MAX_PARTS, _CACHED_PART_SPENT, _QUERY_FIELDS and _MAX_QUERY_FIELDS, and
    # sensor.phi.recognizers.scan_fields, _URL_FINDINGS, _MAX_URL_FINDINGS, _URL_CONFIDENCE and _URL_CHARS
    "bind_request": "sensor.phi.layers:_PARTS",
    # with sensor.capture.bpf.BULK_SEGMENT and HTTP_PORTS, sensor.decode.dns.LOCAL_NAME_PORTS and
    # sensor.capture.workers.SERVICE_PORTS
    "bind_select": "sensor.capture.pcap:MAX_FRAME",
}

# compiled entry points held equal to an outside tool rather than to Python code -> how
HELD_BY_TOOLS: dict[str, str] = {
    # tcpdump -r FILE -w - with sensor.capture.bpf.default_filter, then the replay's worker split
    # (select_route, sensor.capture.workers.route_of_py: DNS answers to both workers)
    "select_pcap_file": "sensor.capture.bpf:default_filter",
    # the record boundaries a walk from the file header finds (tests/test_prefilter.py)
    "pcap_resync": "sensor.capture.pcap:pcap_records_py",
}


def entry_points() -> dict[str, str]:
    """Every compiled entry point and its reference, whatever its kind."""
    return {**TWINS, **BINDERS, **HELD_BY_TOOLS}


# The command line's program with sensor._fast unimportable, as on a machine without a C
# compiler: every twin's reference at work. Tests and the bench compare outputs with it.
WITHOUT_EXTENSION = """
import sys
from importlib.abc import MetaPathFinder

class _NotBuilt(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sensor._fast":
            raise ImportError("not built")
        return None

sys.meta_path.insert(0, _NotBuilt())
from sensor.cli import main
status = main(sys.argv[1:])
assert "sensor._fast" not in sys.modules
sys.exit(status)
"""


def pure_python_command(args: list[str]) -> list[str]:
    """`phi-sensor ARGS` run by this interpreter on the pure-Python path."""
    return [sys.executable, "-c", WITHOUT_EXTENSION, *args]
