"""DNS decoding: real captures (compared with expected.jsonl and tshark), crafted edge cases, pairing, fuzzing."""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dpkt
import pytest
from conftest import CORPUS, PCAPS, corpus_expectation, corpus_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.decode import dns
from sensor.decode.dns import (
    DnsError,
    DnsMessage,
    DnsTransactions,
    looks_like_dns,
    parse_message,
    parse_message_py,
    split_tcp_messages,
)
from sensor.records import Counters, DnsAnswer, Flow

DNS_CAPTURES = [
    "cond-log-dns-dig__input.pcap",
    "dns__dns-udp-eve-txt__input.pcap",
    "dns__dns-udp-eve-log-srv__input.pcap",
    "dns-udp-junkrequest-first__input.pcap",
    "dns__dns-tcp-www-google-com__dns.pcap",
    "dns__dns-tcp-multirequest-buffer__dns-tcp-multirequest-buffer.pcap",
    "datasets-04-http-dns__input.pcap",  # 802.1Q-tagged
]


def _ip_layers(path: Path) -> Iterator[tuple[float, dpkt.Packet]]:
    with path.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        raw_ip = reader.datalink() in (dpkt.pcap.DLT_RAW, 101)  # 101: LINKTYPE_RAW
        for ts, frame in reader:
            if raw_ip:
                layer = dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
            else:
                layer = dpkt.ethernet.Ethernet(frame).data
            if isinstance(layer, (dpkt.ip.IP, dpkt.ip6.IP6)):
                yield ts, layer


def _address(layer: dpkt.Packet, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if isinstance(layer, dpkt.ip.IP) else socket.AF_INET6, raw)


def _dns_units(path: Path) -> list[tuple[float, Flow, bytes]]:
    """UDP payloads one by one, then each TCP direction as one naive stream (by sequence number)."""
    units: list[tuple[float, Flow, bytes]] = []
    segments: dict[Flow, dict[int, bytes]] = {}
    first_seen: dict[Flow, float] = {}
    for ts, layer in _ip_layers(path):
        transport = layer.data
        if not isinstance(transport, (dpkt.udp.UDP, dpkt.tcp.TCP)) or 53 not in (transport.sport, transport.dport):
            continue
        flow = Flow(_address(layer, layer.src), transport.sport, _address(layer, layer.dst), transport.dport,
                    "udp" if isinstance(transport, dpkt.udp.UDP) else "tcp")
        if flow.transport == "udp":
            units.append((ts, flow, bytes(transport.data)))
        elif transport.data:
            segments.setdefault(flow, {}).setdefault(transport.seq, bytes(transport.data))
            first_seen.setdefault(flow, ts)
    for flow, by_seq in segments.items():
        units.append((first_seen[flow], flow, b"".join(by_seq[seq] for seq in sorted(by_seq))))
    return units


def _messages(path: Path) -> list[tuple[float, Flow, DnsMessage]]:
    decoded = []
    for ts, flow, payload in _dns_units(path):
        if flow.transport == "udp":
            try:
                decoded.append((ts, flow, parse_message(payload)))
            except DnsError:
                continue
        else:
            messages, used = split_tcp_messages(payload)
            assert used == len(payload)
            decoded.extend((ts, flow, parse_message(message)) for message in messages)
    return decoded


def _name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def _message(*, flags: int = 0x8180, questions: Sequence[tuple[bytes, int]] = (),
             answers: Sequence[tuple[bytes, int, int, bytes]] = (), additional: bytes = b"",
             arcount: int = 0, msg_id: int = 0x1234) -> bytes:
    """A DNS message from wire-form pieces: questions (name, qtype), answers (name, type, ttl, rdata)."""
    out = struct.pack("!HHHHHH", msg_id, flags, len(questions), len(answers), 0, arcount)
    for name, qtype in questions:
        out += name + struct.pack("!HH", qtype, 1)
    for name, rtype, ttl, rdata in answers:
        out += name + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return out + additional


EXAMPLE = _name([b"www", b"example", b"com"])
# Offset 12 is where the first question's name starts.
POINTER_TO_QUESTION = b"\xc0\x0c"


# Real captures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", DNS_CAPTURES)
def test_question_names_matchcorpus_expectation(capture: str) -> None:
    messages = _messages(corpus_file(capture))
    seen: list[str] = []
    for _ts, _flow, message in messages:
        for name, _qtype in message.questions:
            if name.lower() not in seen:
                seen.append(name.lower())
    assert seen == [name.lower() for name in corpus_expectation(capture)["dns_queries"]]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("capture", DNS_CAPTURES)
def test_names_addresses_and_cnames_match_tshark(capture: str) -> None:
    path = corpus_file(capture)
    output = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "dns.qry.name", "-e", "dns.a", "-e", "dns.cname"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    tshark_names, tshark_a, tshark_cname = [], [], []
    for line in output.splitlines():
        names, addresses, cnames = (line.split("\t") + ["", "", ""])[:3]
        tshark_names += [n for n in names.split(",") if n]
        tshark_a += [a for a in addresses.split(",") if a]
        tshark_cname += [c for c in cnames.split(",") if c]
    ours = _messages(path)
    our_names = [name for _ts, _flow, msg in ours for name, _qtype in msg.questions]
    our_a = [answer.data for _ts, _flow, msg in ours for answer in msg.answers if answer.type == "A"]
    our_cname = [answer.data for _ts, _flow, msg in ours for answer in msg.answers if answer.type == "CNAME"]
    assert sorted(our_names) == sorted(tshark_names)
    assert sorted(our_a) == sorted(tshark_a)
    assert sorted(our_cname) == sorted(tshark_cname)


def test_dig_capture_pairs_into_one_record_with_its_cname_chain() -> None:
    counters = Counters()
    transactions = DnsTransactions(counters=counters)
    records = []
    for ts, flow, message in _messages(corpus_file("cond-log-dns-dig__input.pcap")):
        records += transactions.on_message(ts, flow, message)
    records += transactions.flush()
    assert len(records) == 1
    record = records[0]
    assert record.name == "www.suricata-ids.org" and record.qtype == "A"
    assert record.response_seen and record.rcode == "NOERROR"
    assert record.flow.dst_port == 53 and record.flow.transport == "udp"
    assert [(a.name, a.type, a.data) for a in record.answers] == [
        ("www.suricata-ids.org", "CNAME", "suricata-ids.org"),
        ("suricata-ids.org", "A", "192.0.78.24"),
        ("suricata-ids.org", "A", "192.0.78.25"),
    ]
    assert record.answers[0].ttl == 3544
    assert counters.get("dns.unanswered") == 0 and counters.get("dns.unmatched_responses") == 0


def test_txt_and_srv_answers_from_real_captures() -> None:
    txt = [a for _ts, _f, m in _messages(corpus_file("dns__dns-udp-eve-txt__input.pcap")) for a in m.answers
           if a.type == "TXT"]
    assert [a.data for a in txt] == ["v=spf1 include:_spf.google.com ~all"]
    srv = [a.data for _ts, _f, m in _messages(corpus_file("dns__dns-udp-eve-log-srv__input.pcap")) for a in m.answers]
    assert srv == ["20 1 5060 sip-anycast-2.voice.google.com", "10 1 5060 sip-anycast-1.voice.google.com"]


def test_junk_first_request_is_rejected_and_the_real_exchange_survives() -> None:
    units = _dns_units(corpus_file("dns-udp-junkrequest-first__input.pcap"))
    with pytest.raises(DnsError):
        parse_message(units[0][2])
    assert not looks_like_dns(units[0][2])
    transactions = DnsTransactions()
    records = []
    for ts, flow, payload in units:
        try:
            records += transactions.on_message(ts, flow, parse_message(payload))
        except DnsError:
            continue
    records += transactions.flush()
    assert [(r.name, r.response_seen, r.answers[0].data) for r in records] == [
        ("catenacyber.Fr", True, "188.165.53.185")]


def test_tcp_multirequest_stream_pairs_twenty_nxdomain_answers() -> None:
    counters = Counters()
    transactions = DnsTransactions(counters=counters)
    records = []
    for ts, flow, message in _messages(
            corpus_file("dns__dns-tcp-multirequest-buffer__dns-tcp-multirequest-buffer.pcap")):
        records += transactions.on_message(ts, flow, message)
    assert len(transactions) == 0
    assert [r.name for r in records] == [f"{i}.google.com" for i in range(20)]
    assert {(r.rcode, r.response_seen, r.flow.dst_port, r.flow.transport) for r in records} == {
        ("NXDOMAIN", True, 53, "tcp")}


def test_split_tcp_messages_keeps_partial_tail() -> None:
    query = _message(flags=0x0100, questions=[(EXAMPLE, 1)])
    framed = struct.pack("!H", len(query)) + query
    stream = framed * 2 + framed[:7]
    messages, used = split_tcp_messages(stream)
    assert messages == [query, query] and used == 2 * len(framed)
    assert split_tcp_messages(b"\x00") == ([], 0)
    assert split_tcp_messages(b"\x00\x00") == ([b""], 2)


# Crafted messages ------------------------------------------------------------------------------


def test_answer_types_render_as_text() -> None:
    mx = struct.pack("!H", 10) + b"\x04mail\xc0\x10"  # offset 16: "example.com" inside the question
    soa = _name([b"ns1"]) + _name([b"hostmaster"]) + struct.pack("!IIIII", 2024, 7200, 3600, 1209600, 300)
    answers = [
        (POINTER_TO_QUESTION, 28, 60, bytes.fromhex("20010db8000000000000000000000001")),
        (POINTER_TO_QUESTION, 15, 60, mx),
        (POINTER_TO_QUESTION, 16, 60, b"\x05hello\x06 world\x02\x00\\"),
        (POINTER_TO_QUESTION, 6, 60, soa),
        (POINTER_TO_QUESTION, 12, 60, _name([b"ptr", b"example"])),
        (POINTER_TO_QUESTION, 99, 60, b""),
        (POINTER_TO_QUESTION, 1234, 60, b"\xde\xad"),
        (POINTER_TO_QUESTION, 1, 60, b"\x01\x02\x03"),  # wrong length for A: shown as hex
    ]
    message = parse_message(_message(questions=[(EXAMPLE, 255)], answers=answers))
    assert message.questions == (("www.example.com", "ANY"),)
    assert [(a.name, a.type, a.data, a.ttl) for a in message.answers] == [
        ("www.example.com", "AAAA", "2001:db8::1", 60),
        ("www.example.com", "MX", "10 mail.example.com", 60),
        ("www.example.com", "TXT", "hello world\\000\\\\", 60),
        ("www.example.com", "SOA", "ns1 hostmaster 2024 7200 3600 1209600 300", 60),
        ("www.example.com", "PTR", "ptr.example", 60),
        ("www.example.com", "SPF", "", 60),
        ("www.example.com", "TYPE1234", "dead", 60),
        ("www.example.com", "A", "010203", 60),
    ]


def test_https_record_matches_scapy_encoding() -> None:
    from scapy.layers.dns import DNS, DNSQR, DNSRRHTTPS, SvcParam

    wire = bytes(DNS(id=7, qr=1, qd=DNSQR(qname="example.com", qtype="HTTPS"), an=DNSRRHTTPS(
        rrname="example.com", ttl=300, svc_priority=1, target_name=".", svc_params=[
            SvcParam(key="alpn", value=[b"h2", b"h3"]),
            SvcParam(key="ipv4hint", value=["1.2.3.4", "5.6.7.8"]),
            SvcParam(key="ipv6hint", value=["2001:db8::1"]),
        ])))
    message = parse_message(wire)
    assert message.questions == (("example.com", "HTTPS"),)
    assert message.answers == (DnsAnswer("example.com", "HTTPS",
                                         "1 . alpn=h2,h3 ipv4hint=1.2.3.4,5.6.7.8 ipv6hint=2001:db8::1", 300),)


def test_svcb_alias_form_and_broken_params_fall_back_to_hex() -> None:
    alias = struct.pack("!H", 0) + _name([b"svc", b"example"])
    broken = struct.pack("!H", 1) + b"\0" + struct.pack("!HH", 1, 9) + b"\x02h2"
    message = parse_message(_message(questions=[(EXAMPLE, 64)], answers=[
        (POINTER_TO_QUESTION, 64, 1, alias), (POINTER_TO_QUESTION, 65, 1, broken)]))
    assert [a.data for a in message.answers] == ["0 svc.example", broken.hex()]


def test_names_escape_dots_and_unprintable_bytes_like_dig() -> None:
    odd = _name([b"a.b", b"c\\d", b"sp ace", b"\x00\xff", b"com"])
    message = parse_message(_message(flags=0x0100, questions=[(odd, 1), (b"\0", 2)]))
    assert message.questions == (("a\\.b.c\\\\d.sp\\032ace.\\000\\255.com", "A"), (".", "NS"))
    assert not message.is_response and message.opcode == 0


def test_compression_pointers_must_point_backwards() -> None:
    forward = _message(flags=0x0100, questions=[(b"\xc0\x20", 1)]) + b"\0" * 32
    with pytest.raises(DnsError, match="backwards"):
        parse_message(forward)
    itself = _message(flags=0x0100, questions=[(b"\xc0\x0c", 1)])
    with pytest.raises(DnsError, match="backwards"):
        parse_message(itself)


def test_pointer_chain_is_followed_and_then_capped() -> None:
    # Each answer's name is "x" + pointer to the previous answer's name: a long but legal chain.
    header_and_question = _message(questions=[(_name([b"end"]), 1)])
    body = b""
    previous = 12
    for _ in range(130):
        position = len(header_and_question) + len(body)
        body += b"\x01x" + struct.pack("!H", 0xC000 | previous) + struct.pack("!HHIH", 1, 1, 0, 4) + b"\1\2\3\4"
        previous = position

    def build(count: int) -> bytes:
        data = bytearray(header_and_question + body)
        struct.pack_into("!H", data, 6, count)  # ANCOUNT; later answers are trailing bytes
        return bytes(data)

    # Names already decoded in the message are reused, so a long chain costs one step per name,
    # and the 255-octet limit still holds for the names it builds.
    assert parse_message(build(60)).answers[59].name == ".".join(["x"] * 60 + ["end"])
    assert parse_message(build(120)).answers[119].name == ".".join(["x"] * 120 + ["end"])
    with pytest.raises(DnsError, match="255"):
        parse_message(build(130))


def test_label_and_name_limits() -> None:
    with pytest.raises(DnsError, match="label type"):
        parse_message(_message(flags=0x0100, questions=[(b"\x41" + b"a" * 65 + b"\0", 1)]))
    too_long = _name([b"a" * 63] * 4)  # 4 * 64 + 1 = 257 octets
    with pytest.raises(DnsError, match="255"):
        parse_message(_message(flags=0x0100, questions=[(too_long, 1)]))
    assert parse_message(_message(flags=0x0100, questions=[(_name([b"a" * 63] * 3 + [b"b" * 61]), 1)]))


def test_truncations_raise_dns_error() -> None:
    full = _message(questions=[(EXAMPLE, 1)], answers=[(POINTER_TO_QUESTION, 1, 5, b"\1\2\3\4")])
    for cut in range(len(full)):
        with pytest.raises(DnsError):
            parse_message(full[:cut])
    assert parse_message(full + b"trailing").answers[0].data == "1.2.3.4"


def test_edns_extended_rcode_and_rcode_names() -> None:
    opt = b"\0" + struct.pack("!HHIH", 41, 4096, 1 << 24, 0)  # extended RCODE 1 -> 16 BADVERS
    assert parse_message(_message(flags=0x8180, additional=opt, arcount=1)).rcode == "BADVERS"
    assert parse_message(_message(flags=0x8183)).rcode == "NXDOMAIN"
    assert parse_message(_message(flags=0x8182)).rcode == "SERVFAIL"
    assert parse_message(_message(flags=0x818C)).rcode == "RCODE12"


def test_looks_like_dns() -> None:
    query = _message(flags=0x0100, questions=[(EXAMPLE, 1)])
    assert looks_like_dns(query)
    assert not looks_like_dns(query[:14])
    assert not looks_like_dns(_message(flags=0x0100) + b"\0" * 8)  # query without a question
    assert not looks_like_dns(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not looks_like_dns(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40)


# Pairing ---------------------------------------------------------------------------------------

CLIENT = Flow("10.0.0.5", 40000, "10.0.0.53", 53, "udp")
SERVER = Flow("10.0.0.53", 53, "10.0.0.5", 40000, "udp")


def _query(name: str = "www.example.com", msg_id: int = 1, qtype: str = "A") -> DnsMessage:
    return DnsMessage(msg_id, False, 0, "NOERROR", ((name, qtype),), ())


def _response(name: str = "www.example.com", msg_id: int = 1, rcode: str = "NOERROR") -> DnsMessage:
    answer = DnsAnswer(name, "A", "192.0.2.1", 30)
    return DnsMessage(msg_id, True, 0, rcode, ((name, "A"),), (answer,))


def test_response_completes_query_case_insensitively() -> None:
    transactions = DnsTransactions()
    assert transactions.on_message(1.0, CLIENT, _query("wWw.ExAmPlE.cOm")) == []
    [record] = transactions.on_message(1.2, SERVER, _response("WWW.EXAMPLE.COM"))
    assert (record.ts, record.flow, record.name, record.rcode) == (1.0, CLIENT, "wWw.ExAmPlE.cOm", "NOERROR")
    assert record.answers[0].data == "192.0.2.1" and len(transactions) == 0


def test_unmatched_response_is_reoriented_towards_the_server() -> None:
    counters = Counters()
    [record] = DnsTransactions(counters=counters).on_message(3.0, SERVER, _response(msg_id=9))
    assert record.flow == CLIENT and record.ts == 3.0 and record.response_seen and record.id == 9
    assert counters.get("dns.unmatched_responses") == 1


def test_retransmissions_merge_and_other_ids_do_not() -> None:
    counters = Counters()
    transactions = DnsTransactions(counters=counters)
    transactions.on_message(1.0, CLIENT, _query())
    transactions.on_message(2.0, CLIENT, _query())
    transactions.on_message(2.5, CLIENT, _query(msg_id=2))
    assert len(transactions) == 2 and counters.get("dns.retransmissions") == 1
    [record] = transactions.on_message(3.0, SERVER, _response())
    assert record.ts == 1.0
    [left] = transactions.flush()
    assert left.id == 2 and not left.response_seen and left.rcode is None and left.answers == ()


def test_expire_emits_only_queries_older_than_the_timeout() -> None:
    counters = Counters()
    transactions = DnsTransactions(timeout=5.0, counters=counters)
    transactions.on_message(1.0, CLIENT, _query("a.example"))
    transactions.on_message(4.0, CLIENT, _query("b.example"))
    assert transactions.expire(5.5) == []
    assert [r.name for r in transactions.expire(6.5)] == ["a.example"]
    assert [r.name for r in transactions.expire(100.0)] == ["b.example"]
    assert counters.get("dns.unanswered") == 2 and transactions.flush() == []


def test_multi_question_query_gives_one_record_per_question() -> None:
    transactions = DnsTransactions()
    query = DnsMessage(4, False, 0, "NOERROR", (("a.example", "A"), ("a.example", "AAAA"), ("b.example", "A")), ())
    transactions.on_message(1.0, CLIENT, query)
    # Same id and name (the key) for A and AAAA: the second question merges into the first.
    assert len(transactions) == 2
    records = transactions.flush()
    assert [(r.name, r.qtype) for r in records] == [("a.example", "A"), ("b.example", "A")]


def test_max_pending_evicts_the_oldest_as_unanswered() -> None:
    counters = Counters()
    transactions = DnsTransactions(max_pending=2, counters=counters)
    assert transactions.on_message(1.0, CLIENT, _query(msg_id=1)) == []
    assert transactions.on_message(1.1, CLIENT, _query(msg_id=2)) == []
    [evicted] = transactions.on_message(1.2, CLIENT, _query(msg_id=3))
    assert evicted.id == 1 and not evicted.response_seen
    assert len(transactions) == 2 and counters.get("dns.pending_evicted") == 1


# Property tests --------------------------------------------------------------------------------


def _corpus_messages() -> list[bytes]:
    found = []
    for capture in DNS_CAPTURES:
        path = CORPUS / capture
        if path.is_file():
            for _ts, flow, payload in _dns_units(path):
                found += [payload] if flow.transport == "udp" else split_tcp_messages(payload)[0]
    return found or [_message(questions=[(EXAMPLE, 1)], answers=[(POINTER_TO_QUESTION, 1, 5, b"\1\2\3\4")])]


SEEDS = _corpus_messages()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_bounded(data: bytes) -> None:
    started = time.perf_counter()
    try:
        message = parse_message(data)
    except DnsError:
        pass
    else:
        assert all(isinstance(answer, DnsAnswer) for answer in message.answers)
    looks_like_dns(data)
    assert time.perf_counter() - started < 0.5


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_dns_error(data: bytes) -> None:
    _parse_bounded(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
       st.integers(0, 2000))
def test_mutated_real_messages_raise_only_dns_error(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    _parse_bounded(bytes(data[:cut]) if cut < len(data) else bytes(data))


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6), st.binary(max_size=1))
def test_tcp_framing_round_trips(messages: list[bytes], tail: bytes) -> None:
    stream = b"".join(struct.pack("!H", len(m)) + m for m in messages)
    assert split_tcp_messages(stream + tail) == (messages, len(stream))


LABEL = st.binary(min_size=1, max_size=20)


@FUZZ
@given(st.lists(LABEL, min_size=1, max_size=5), st.lists(st.ip_addresses(v=4).map(str), max_size=4))
def test_scapy_built_responses_decode_to_the_same_values(labels: list[bytes], addresses: list[str]) -> None:
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    # scapy takes names as text with dots; keep labels it can express without escaping.
    labels = [bytes(b for b in label if 0x30 <= b <= 0x7A and b != 0x2E) or b"x" for label in labels]
    name = b".".join(labels)
    records = [DNSRR(rrname=name, type="A", ttl=i, rdata=address) for i, address in enumerate(addresses)]
    packet = DNS(id=5, qr=1, qd=DNSQR(qname=name, qtype="A"), an=records)
    message = parse_message(bytes(packet.compress() if records else packet))
    rendered = ".".join(label.decode().replace("\\", "\\\\") for label in labels)
    assert message.questions == ((rendered, "A"),)
    assert [(a.name, a.data, a.ttl) for a in message.answers] == [
        (rendered, address, i) for i, address in enumerate(addresses)]


# Compiled fast path ----------------------------------------------------------------------------
# parse_message takes the C parser's result when it gives one; parse_message_py is the reference.

fast = pytest.mark.skipif(dns._parse_dns_fast is None, reason="the compiled fast path is not built")


def test_fast_path_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the package runs in pure Python")
    assert dns._parse_dns_fast is not None, "pip install -e . should have compiled sensor/_fast/"


def _fast_agrees(data: bytes) -> bool:
    """True when the fast parser took the message: then it must equal the reference exactly."""
    taken = dns._parse_dns_fast(data)
    try:
        reference = parse_message_py(data)
    except DnsError:
        reference = None
    if taken is None:
        return False
    assert reference is not None, f"fast path accepted what the reference rejects: {data.hex()}"
    assert parse_message(data) == reference, data.hex()
    return True


def _capture_messages() -> list[bytes]:
    found = list(SEEDS)
    for path in sorted(PCAPS.glob("*.pcap")):
        for _ts, flow, payload in _dns_units(path):
            found += [payload] if flow.transport == "udp" else split_tcp_messages(payload)[0]
    return found


@fast
def test_fast_path_matches_the_reference_on_every_captured_message() -> None:
    messages = _capture_messages()
    taken = sum(_fast_agrees(message) for message in messages)
    # The story captures are ordinary browsing DNS: the fast path must carry nearly all of it.
    assert taken >= 0.9 * len(messages), (taken, len(messages))


def _svcb(priority: int, target: bytes, params: list[tuple[int, bytes]]) -> bytes:
    return struct.pack("!H", priority) + target + b"".join(struct.pack("!HH", k, len(v)) + v for k, v in params)


V6 = bytes.fromhex


@fast
@pytest.mark.parametrize("params, taken", [
    ([(1, b"\x02h3\x02h2"), (4, bytes([192, 0, 2, 1, 198, 51, 100, 7]))], True),
    ([(0, struct.pack("!HH", 1, 4)), (2, b""), (3, struct.pack("!H", 8443)), (5, b"\x00\x01\xfe"), (7, b"/q{?dns}")], True),
    ([(6, V6("20010db8000000000000000000000001") + V6("20010db8000100000000000200000000"))], True),
    ([(6, V6("00010000000000020000000000030004"))], True),  # two zero runs of equal length: the first is "::"
    ([(6, V6("00000000000000000000ffff01020304"))], False),  # IPv4-mapped: the reference decides
    ([(6, V6("fe800000000000000000000000000001")), (8, b""), (9, b"x"), (65000, b"")], True),
    ([(3, b"\x01"), (4, b"\x01\x02"), (6, b"\x00" * 15), (1, b"")], True),  # odd lengths print bare names
    ([(0, b"\x00")], True),
    ([(1, b"\x00")], False), ([(1, b"\x03h2")], False), ([(7, b"/a\\b")], False),  # broken, or needs escaping
    ([(4, b"\x01\x02\x03\x04")] * 2 + [(9, b"\x01")], True),
])
def test_fast_path_matches_the_reference_on_https_records(params: list[tuple[int, bytes]], taken: bool) -> None:
    for rtype in (64, 65):
        for target in (b"\0", POINTER_TO_QUESTION, _name([b"svc", b"example"])):
            assert _fast_agrees(_message(questions=[(EXAMPLE, rtype)], answers=[
                (POINTER_TO_QUESTION, rtype, 300, _svcb(1, target, params))])) is taken


@fast
def test_fast_path_declines_what_needs_escaping_and_rare_types() -> None:
    odd = _name([b"a.b", b"com"])
    mx = struct.pack("!H", 10) + b"\x04mail\xc0\x10"
    for message in (
        _message(flags=0x0100, questions=[(odd, 1)]),
        _message(questions=[(EXAMPLE, 16)], answers=[(POINTER_TO_QUESTION, 16, 1, b"\x03a\\b")]),
        _message(questions=[(EXAMPLE, 15)], answers=[(POINTER_TO_QUESTION, 15, 1, mx)]),
    ):
        assert dns._parse_dns_fast(message) is None
        assert parse_message(message) == parse_message_py(message)
    plain = _message(questions=[(EXAMPLE, 1)], answers=[
        (POINTER_TO_QUESTION, 5, 9, _name([b"cdn", b"example", b"net"])),
        (_name([b"cdn", b"example", b"net"]), 1, 9, b"\x01\x02\x03\x04"),
        (POINTER_TO_QUESTION, 16, 9, b"\x05hello\x06 world"),
        (POINTER_TO_QUESTION, 1, 9, b"\x01\x02\x03"),
        (POINTER_TO_QUESTION, 4321, 9, b"\xbe\xef"),
    ], additional=b"\0" + struct.pack("!HHIH", 41, 4096, 1 << 24, 0), arcount=1)
    assert _fast_agrees(plain)
    assert parse_message(plain).rcode == "BADVERS"


@fast
@FUZZ
@given(st.binary(max_size=600))
def test_fast_path_agrees_on_random_bytes(data: bytes) -> None:
    _fast_agrees(data)


@fast
@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
       st.integers(0, 2000))
def test_fast_path_agrees_on_mutated_real_messages(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    _fast_agrees(bytes(data[:cut]) if cut < len(data) else bytes(data))


SVC_PARAM = st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 300]), st.binary(max_size=40))


@fast
@FUZZ
@given(st.lists(SVC_PARAM, max_size=6), st.sampled_from([1, 5, 16, 28, 64, 65, 99, 255]), st.binary(max_size=40))
def test_fast_path_agrees_on_generated_records(params: list[tuple[int, bytes]], rtype: int, rdata: bytes) -> None:
    svcb = _svcb(1, POINTER_TO_QUESTION, params)
    _fast_agrees(_message(questions=[(EXAMPLE, rtype)], answers=[
        (POINTER_TO_QUESTION, rtype, 60, rdata), (POINTER_TO_QUESTION, 65, 60, svcb)]))


# DNS datagrams from frame to message in one compiled call ---------------------------------------

from sensor.decode import dispatch  # noqa: E402

try:
    from sensor._fast import decode_frame as _decode_frame
    from sensor._fast import decode_packet as _decode_packet
    from sensor._fast import dns_datagram as _dns_datagram
except ImportError:  # built without a C compiler
    _dns_datagram = _decode_frame = _decode_packet = None

datagram_fast = pytest.mark.skipif(_dns_datagram is None, reason="the compiled fast path is not built")


def _udp_frame(message: bytes, sport: int, dport: int, v6: bool, vlan: bool, pad: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(message), 0) + message
    if v6:
        ip = struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + socket.inet_pton(socket.AF_INET6, "fd00::5") \
            + socket.inet_pton(socket.AF_INET6, "2001:db8::53")
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton("10.20.0.5"),
                         socket.inet_aton("10.0.0.53"))
        ethertype = 0x0800
    tags = struct.pack("!HH", 0x8100, 7) if vlan else b""
    return bytes(12) + tags + struct.pack("!H", ethertype) + ip + udp + bytes(pad)


def _datagram_agrees(linktype: int, frame: bytes) -> bool:
    taken = _dns_datagram(linktype, frame)
    # decode_packet: the datagram when dns_datagram takes it, else what decode_frame gives
    assert _decode_packet(linktype, frame) == (taken if taken is not None else _decode_frame(linktype, frame))
    if taken is None:
        return False
    assert taken == dispatch.dns_datagram_py(linktype, frame), frame.hex()
    return True


@datagram_fast
def test_a_dns_datagram_is_taken_in_one_call() -> None:
    query = _message(flags=0x0100, questions=[(EXAMPLE, 1)])
    answer = _message(questions=[(EXAMPLE, 1)], answers=[(POINTER_TO_QUESTION, 1, 300, bytes([192, 0, 2, 7]))])
    for message, ports in ((query, (40000, 53)), (answer, (53, 40000))):
        for v6 in (False, True):
            assert _datagram_agrees(1, _udp_frame(message, *ports, v6=v6, vlan=v6, pad=6))
    assert _dns_datagram(1, _udp_frame(query, 40000, 5353, False, False, 0)) is None  # not port 53
    # a client's ephemeral port that is a tunnel's: DNS's lower port decides, as for the Python decoder
    from_tunnel_port = _udp_frame(query, 4789, 53, False, False, 0)
    assert _dns_datagram(1, from_tunnel_port) is not None and _datagram_agrees(1, from_tunnel_port)
    assert _dns_datagram(1, _udp_frame(b"\x00" * 5, 40000, 53, False, False, 0)) is None  # not DNS


@datagram_fast
@settings(max_examples=400, deadline=None)
@given(st.sampled_from([_message(flags=0x0100, questions=[(EXAMPLE, 28)]),
                        _message(questions=[(EXAMPLE, 1)], answers=[(POINTER_TO_QUESTION, 1, 60, b"\x01\x02\x03\x04")])]),
       st.sampled_from([(53, 40000), (40000, 53), (53, 53)]), st.booleans(), st.booleans(), st.integers(0, 8),
       st.lists(st.tuples(st.integers(0, 150), st.integers(0, 255)), max_size=3), st.integers(0, 150))
def test_the_compiled_datagram_path_equals_the_python_one(
    message: bytes, ports: tuple[int, int], v6: bool, vlan: bool, pad: int, flips: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(_udp_frame(message, *ports, v6=v6, vlan=vlan, pad=pad))
    for position, value in flips:
        frame[position % len(frame)] = value
    _datagram_agrees(1, bytes(frame[:cut]) if cut < len(frame) else bytes(frame))
