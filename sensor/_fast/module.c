#include "fast.h"

/* The entry points; sensor/compiled.py names the Python reference of each. */
static PyMethodDef methods[] = {
    {"parse_hello", parse_hello, METH_O,
     "parse_hello(message) -> (server_name, alpn, ech, legacy_version, offers_tls13, extensions), or None"},
    {"hello_message", hello_message, METH_O,
     "hello_message(stream) -> (status, the ClientHello handshake message once whole): the TLS record layer"},
    {"community_id", community_id, METH_VARARGS,
     "community_id(src_ip, src_port, dst_ip, dst_port, protocol, seed) -> Community ID v1, or None"},
    {"set_tunnel_ports", set_tunnel_ports, METH_VARARGS,
     "set_tunnel_ports(ports, vxlan_ports, geneve_ports): the UDP ports whose datagrams are tunnels"},
    {"decode_frame", (PyCFunction)(void (*)(void))decode_frame, METH_FASTCALL,
     "decode_frame(linktype, frame) -> the PacketDecoder.decode tuple, or None to let the Python decoder decide"},
    {"dns_datagram", (PyCFunction)(void (*)(void))dns_datagram, METH_FASTCALL,
     "dns_datagram(linktype, frame) -> (src, sport, dst, dport, DnsMessage) for a DNS datagram, or None"},
    {"decode_packet", (PyCFunction)(void (*)(void))decode_packet, METH_FASTCALL,
     "decode_packet(linktype, frame) -> dns_datagram's tuple for a DNS datagram, else decode_frame's, else None"},
    {"share_decoder", share_decoder, METH_VARARGS,
     "share_decoder(shared_route, cache, min_ttl, max_ttl) -> decode(linktype, frame, ts): decode_packet, learning"
     " another replay worker's DNS answers into the cache at once"},
    {"bind_handshakes", bind_handshakes, METH_VARARGS, "bind_handshakes(TlsHello, Flow, LEGACY_VERSIONS)"},
    {"handshake_decoder", handshake_decoder, METH_VARARGS,
     "handshake_decoder(decode, streams, half_open, finished, unanchored, counts, max_streams, max_half_open,"
     " max_finished, decoder, stream_type, consumer_type, hello_cap, http_type, parser_type, head_state, new_request,"
     " texts, max_texts) -> decode(linktype, frame, ts): decode's answer, a SYN, a first ClientHello (whole, or split"
     " over in-order segments) and an HTTP connection's whole requests taken"},
    {"decode_mirrored", (PyCFunction)(void (*)(void))decode_mirrored, METH_FASTCALL,
     "decode_mirrored(linktype, frame) -> (decoded, tunnel, outer src, outer dst, tunnel id, outer VLAN, inner VLAN,"
     " erspan) for a packet inside VXLAN or ERSPAN, or None to let the Python decoder decide"},
    {"mirrored_found", (PyCFunction)(void (*)(void))mirrored_found, METH_FASTCALL,
     "mirrored_found(packets, counts, texts, fallback, max_flows, max_texts, linktype, frame, ts) -> the packet inside"
     " a mirror tunnel, its tunnel counted and remembered, as TrafficDecoder.declined_found answers"},
    {"declined_decoder", declined_decoder, METH_VARARGS,
     "declined_decoder(decode, declined, route_of, shared_route) -> decode(linktype, frame, ts): decode's answer,"
     " a frame it declined taken by declined in the same call"},
    {"replay_alerts", (PyCFunction)(void (*)(void))replay_alerts, METH_FASTCALL,
     "replay_alerts(batch, decode, feed_found, decoder, on_record, ship): an alerts replay's loop over a batch"},
    {"bind_pcap", bind_pcap, METH_O, "bind_pcap(TIME_JUMP)"},
    {"pcap_records", pcap_records, METH_VARARGS,
     "pcap_records(buffer, start, linktype, big_endian, nanoseconds, high)"
     " -> ([(ts, linktype, frame), ...], next, empty, late, high)"},
    {"pcap_resync", pcap_resync, METH_VARARGS,
     "pcap_resync(fd, offset, big_endian) -> a likely record boundary at or after offset, or -1"},
    {"bind_select", bind_select, METH_VARARGS,
     "bind_select(MAX_FRAME, BULK_SEGMENT, HTTP_PORTS, LOCAL_NAME_PORTS, SERVICE_PORTS)"},
    {"select_worker", select_worker, METH_VARARGS, "select_worker(linktype, frame) -> the replay worker (0 or 1) of a frame"},
    {"select_route", select_route, METH_VARARGS,
     "select_route(linktype, frame) -> the replay worker of a frame, plus 2 for a DNS answer both learn from"},
    {"select_pcap_file", select_pcap_file, METH_VARARGS,
     "select_pcap_file(fd, offset, linktype, big_endian, enough, split, wanted, stop_at)"
     " -> (kept for worker 0, kept for worker 1, next offset, state, detail)"},
    {"event_envelope", (PyCFunction)(void (*)(void))event_envelope, METH_FASTCALL,
     "event_envelope(ts, dataset, flow, protocol, observer, ecs_version, module, data_stream) -> the fields every "
     "event has"},
    {"bind_json", bind_json, METH_O, "bind_json(orjson.dumps)"},
    {"iso_time", iso_time, METH_O, "iso_time(ts) -> UTC ISO 8601 with microseconds, or None"},
    {"prune", prune, METH_O, "prune(value) -> value without None, \"\", [] and {}, or None"},
    {"dns_event_line", (PyCFunction)(void (*)(void))dns_event_line, METH_FASTCALL,
     "dns_event_line(record, registered_domain or None, prefix) -> the event as a JSON line, or None"},
    {"tls_event_line", (PyCFunction)(void (*)(void))tls_event_line, METH_FASTCALL,
     "tls_event_line(record, destination_domain or None, prefix) -> the event as a JSON line, or None"},
    {"event_lines", (PyCFunction)(void (*)(void))event_lines, METH_FASTCALL,
     "event_lines(records, DnsQuery, TlsHello, Flow, registered_domain, is_cover_name, prefixes, json_line, "
     "TunnelledFlow, tunnel_parts, HttpRequest, http_fields) -> "
     "their events as JSON lines, one block"},
    {"alert_line", (PyCFunction)(void (*)(void))alert_line, METH_FASTCALL,
     "alert_line(kind, record, domain, stamp, head0, score, event_id, head1, first, last, head2, hosts, severity,"
     " alert_key, count, source_record, destination, summary, phi_host, destinations, vendor_baa, rule, network_tail,"
     " tunnel, middle) -> an alert document on a lookup, hello or request as a JSON line, or None"},
    {"window_event_id", (PyCFunction)(void (*)(void))window_event_id, METH_FASTCALL,
     "window_event_id(rule, source, subject, start) -> a throttle window's event.id, or None"},
    {"detect_front", detect_front, METH_VARARGS,
     "detect_front(state, on_record_py, dns_kind, hello_kind) -> on_record, its commonest answer compiled"},
    {"bind_hints", bind_hints, METH_VARARGS, "bind_hints(words, numeric_bit, mbi_bit, worded_bit, email_bit)"},
    {"identifier_hints", identifier_hints, METH_O,
     "identifier_hints(text) -> the identifier families that may occur in text, as bits, or None"},
    {"bind_query", bind_query, METH_VARARGS, "bind_query(piece_info, piece_info_uncached, cached_chars, redact_part, quoted)"},
    {"redact_query", redact_query, METH_VARARGS,
     "redact_query(query, needles, carried, findings, needles_arg) -> the query masked, or None"},
    {"bind_phi", bind_phi, METH_VARARGS, "bind_phi(_field, _plain_py, _bytes_to_text_py, _PEELED, DEFAULT_LIMITS, _PEELED_CHARS)"},
    {"bytes_text", bytes_text, METH_O, "bytes_text(data) -> the bytes as text when mostly printable, else None (_bytes_to_text_py)"},
    {"plain_text", plain_text, METH_O, "plain_text(text) -> whether the peel takes text as it is (_plain_py)"},
    {"peel_form", (PyCFunction)(void (*)(void))peel_form, METH_FASTCALL,
     "peel_form(peeler, pieces, prefix, depth, max_fields, plain_depth) -> the index of the first piece left to"
     " Peeler.form_py's loop, the pieces before it peeled"},
    {"peel_json", (PyCFunction)(void (*)(void))peel_json, METH_FASTCALL,
     "peel_json(peeler, obj, prefix, depth, nesting, max_nesting, max_fields, plain_depth) -> True once"
     " Peeler.json_py's work is done, False (nothing done) for a document it leaves to it"},
    {"term_may_occur", (PyCFunction)(void (*)(void))term_may_occur, METH_FASTCALL,
     "term_may_occur(by_first, digits_lead, fallback, text, lowered=None) -> TermMatcher.may_occur_py(text, lowered)"},
    {"bind_scan", bind_scan, METH_VARARGS, "bind_scan(_context, _scan_short_field, _scan_field, _CACHED_VALUE_CHARS)"},
    {"scan_fields", (PyCFunction)(void (*)(void))scan_fields, METH_FASTCALL,
     "scan_fields(fields, min_confidence, numbers_plain) -> scan_fields_py(fields, min_confidence) for a tuple or"
     " list, else None"},
    {"bind_request", bind_request, METH_VARARGS,
     "bind_request(_PARTS, _peel_alone, _peel_on, scan_fields, _URL_FINDINGS, _MAX_URL_FINDINGS, DEFAULT_LIMITS,"
     " _CACHED_PART_CHARS, _URL_CONFIDENCE, _URL_CHARS, _new_part, _unquote, _MAX_PARTS, _CACHED_PART_SPENT,"
     " _QUERY_FIELDS, _MAX_QUERY_FIELDS)"},
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "scan_request(method, target, headers, body, content_type) -> scan_http_py(...) at its default confidence,"
     " or None"},
    {"bind_gates", bind_gates, METH_VARARGS, "bind_gates(words, _gate_hints_py)"},
    {"gate_hints", (PyCFunction)(void (*)(void))gate_hints, METH_FASTCALL,
     "gate_hints(text, lowered) -> 1 when a gate word is in lowered, | 2 when a pattern gate may open"},
    {"record_maker", record_maker, METH_O, "record_maker(cls) -> make(*fields), cls built from every field in order"},
    {"bind_dns", bind_dns, METH_VARARGS, "bind_dns(DnsMessage, DnsAnswer, TYPE_NAMES, RCODE_NAMES)"},
    {"parse_dns", parse_dns, METH_O, "parse_dns(data) -> DnsMessage, or None to let the Python parser decide"},
    {"http_head", http_head, METH_O,
     "http_head(head) -> (method, target, version, headers) of a request head, or None to let the Python parser decide"},
    {"http_request", (PyCFunction)(void (*)(void))http_request, METH_FASTCALL,
     "http_request(data, start, header_cap, body_cap) -> (method, target, version, headers, host, body, body_bytes,"
     " body_truncated, end) of a whole plain request at data[start], or None to let the Python parser decide"},
    {"quic_crypto_chunks", quic_crypto_chunks, METH_O,
     "quic_crypto_chunks(plaintext) -> [(offset, data), ...] of an Initial's CRYPTO frames, or None"},
    {"quic_absorb", (PyCFunction)(void (*)(void))quic_absorb, METH_FASTCALL,
     "quic_absorb(crypto, pending, pending_bytes, chunks, cap, max_pending) -> pending_bytes after the chunks joined"
     " the CRYPTO stream, -1 to give up, or None"},
    {"quic_initial_keys", (PyCFunction)(void (*)(void))quic_initial_keys, METH_FASTCALL,
     "quic_initial_keys(salt, dcid, key_label, iv_label, hp_label) -> (key, iv, hp) of a client's Initials, or None"},
    {"quic_unprotect", (PyCFunction)(void (*)(void))quic_unprotect, METH_FASTCALL,
     "quic_unprotect(hp, iv, packet, start, pn_offset, end, largest_pn) -> (packet_number, nonce, aad, ciphertext),"
     " or None"},
    {"quic_long_header", (PyCFunction)(void (*)(void))quic_long_header, METH_FASTCALL,
     "quic_long_header(packet, start) -> (version, initial, dcid, pn_offset, end) of the long header at start, or None"},
    {"bind_dns_pairs", bind_dns_pairs, METH_VARARGS, "bind_dns_pairs(DnsQuery, Flow)"},
    {"dns_learn", (PyCFunction)(void (*)(void))dns_learn, METH_FASTCALL,
     "dns_learn(entries, move_to_end, ts, message, min_ttl, max_ttl) -> addresses stored, or None to let"
     " the Python code store them"},
    {"dns_learn_wire", (PyCFunction)(void (*)(void))dns_learn_wire_py, METH_FASTCALL,
     "dns_learn_wire(entries, move_to_end, ts, data, min_ttl, max_ttl) -> what dns_learn stores of the message in"
     " data, read from the wire: addresses stored, or None to let the message path store them"},
    {"dns_step_decoder", dns_step_decoder, METH_VARARGS,
     "dns_step_decoder(decode, decoder, pending, max_pending, counts, on_datagram_py, learn_function, min_ttl, max_ttl)"
     " -> decode(linktype, frame, ts), taking a DNS datagram as TrafficDecoder.feed takes it"},
    {"dns_pair", (PyCFunction)(void (*)(void))dns_pair, METH_FASTCALL,
     "dns_pair(pending, max_pending, ts, src, sport, dst, dport, message, records) -> records added, or None to let"
     " the Python code pair the message"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sensor._fast", "Compiled fast paths for the decode stage.", -1, methods,
};

PyMODINIT_FUNC PyInit__fast(void) {
    if (ecs_init() < 0) return NULL;
    return PyModule_Create(&module);
}

