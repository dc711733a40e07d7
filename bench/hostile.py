#!/usr/bin/env python3
"""Write hostile captures: the traffic an attacker on the span port can send to stall the sensor.

    python bench/hostile.py reverse OUT.pcap [--segments 20000] [--streams 1]
    python bench/hostile.py synflood OUT.pcap [--flows 1000000]
    python bench/hostile.py oversized OUT.pcap
    python bench/hostile.py dataflood OUT.pcap [--flows 1000000]

`reverse`: HTTP requests (to a tracker, with a condition in the query) sent as one-byte TCP
segments in reverse order after the SYN, so every byte but the last waits out of order; the
reassembler must still deliver each request, in linear time.
`synflood`: SYNs from as many distinct (address, port) pairs, never completed, followed by one
real HTTP request that must still be decoded.
`oversized`: requests hiding health data behind size (see `oversized_requests`).
`dataflood`: connections seen mid-stream, one unparseable segment each (see `dataflood_frames`).

Frames are packed from templates with struct (no scapy per packet): a million SYNs take ~3 s.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

ETH_IPV4 = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
SERVER = bytes([93, 184, 216, 34])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP frame; the IP header checksum is right, the TCP one left zero
    (captures taken with checksum offload look the same, and the sensor does not check it)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ETH_IPV4 + ip + tcp + payload


class FastPcap:
    """Classic microsecond pcap, records gathered in a buffer written 1 MiB at a time."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.buf = bytearray()
        self.count = 0

    def write(self, ts_us: int, frame: bytes) -> None:
        self.buf += struct.pack("<IIII", ts_us // 1_000_000, ts_us % 1_000_000, len(frame), len(frame))
        self.buf += frame
        self.count += 1
        if len(self.buf) >= 1 << 20:
            self.file.write(self.buf)
            self.buf.clear()

    def close(self) -> None:
        self.file.write(self.buf)
        self.file.close()


def request(index: int) -> bytes:
    return (
        f"GET /tr?id=1234567890&ev=PageView&dl=https%3A%2F%2Fportal.example-hospital.org%2Foncology%2Fchemo"
        f"&n={index} HTTP/1.1\r\nHost: www.facebook.com\r\nUser-Agent: hostile\r\n\r\n"
    ).encode()


def reverse_frames(segments: int, streams: int, t0: int = 1_700_000_000_000_000) -> Iterator[tuple[int, bytes]]:
    """Per stream: SYN, then a request padded to `segments` bytes as one-byte segments, last byte first."""
    for n in range(streams):
        client = bytes([10, 20, n >> 8 & 255, n & 255])
        sport, isn = 40000 + n % 20000, 1000 + n * 7919
        data = request(n)
        pad = segments - len(data)
        if pad > 0:  # a long header keeps the request whole while it reaches the wanted size
            data = data[:-2] + b"X-Pad: " + b"a" * max(0, pad - 9) + b"\r\n\r\n"
        yield t0, tcp_frame(client, SERVER, sport, 80, isn, SYN)
        for i in range(len(data) - 1, -1, -1):
            t0 += 1
            yield t0, tcp_frame(client, SERVER, sport, 80, isn + 1 + i, ACK | PSH, data[i : i + 1])
        t0 += 1
        yield t0, tcp_frame(client, SERVER, sport, 80, isn + 1 + len(data), ACK | FIN)


def synflood_frames(flows: int, t0: int = 1_700_000_000_000_000) -> Iterator[tuple[int, bytes]]:
    """`flows` SYNs from distinct sources (one template, the address, port and checksum patched),
    then one complete HTTP request that must still be seen."""
    template = bytearray(tcp_frame(b"\x0a\x00\x00\x00", SERVER, 0, 443, 0, SYN))
    ip_header = 14
    for n in range(flows):
        template[ip_header + 12 : ip_header + 16] = bytes([10, 64 + (n >> 24 & 63), n >> 16 & 255, n >> 8 & 255])
        struct.pack_into("!H", template, 34, 1024 + (n & 0xFF) * 251 % 64000)
        struct.pack_into("!I", template, 38, n * 2654435761 & 0xFFFFFFFF)
        struct.pack_into("!H", template, ip_header + 10, 0)
        struct.pack_into("!H", template, ip_header + 10, _checksum(bytes(template[ip_header : ip_header + 20])))
        yield t0 + n, bytes(template)
    t = t0 + flows
    client, isn = bytes([10, 20, 0, 7]), 5000
    yield t, tcp_frame(client, SERVER, 45000, 80, isn, SYN)
    yield t + 1, tcp_frame(client, SERVER, 45000, 80, isn + 1, ACK | PSH, request(0))
    yield t + 2, tcp_frame(client, SERVER, 45000, 80, isn + 1 + len(request(0)), ACK | FIN)


def dataflood_frames(flows: int, size: int = 64, t0: int = 1_700_000_000_000_000) -> Iterator[tuple[int, bytes]]:
    """`flows` connections seen mid-stream (no SYN), one segment of bytes no parser claims each,
    then one complete HTTP request that must still be seen."""
    template = bytearray(tcp_frame(b"\x0a\x00\x00\x00", SERVER, 0, 443, 0, ACK | PSH, b"\xee" * size))
    for n in range(flows):
        template[26:30] = bytes([10, 64 + (n >> 24 & 63), n >> 16 & 255, n >> 8 & 255])
        struct.pack_into("!H", template, 34, 1024 + (n & 0xFF) * 251 % 64000)
        struct.pack_into("!I", template, 38, n * 2654435761 & 0xFFFFFFFF)
        struct.pack_into("!H", template, 24, 0)
        struct.pack_into("!H", template, 24, _checksum(bytes(template[14:34])))
        yield t0 + n, bytes(template)
    t = t0 + flows
    client, isn = bytes([10, 20, 0, 7]), 5000
    yield t, tcp_frame(client, SERVER, 45000, 80, isn, SYN)
    yield t + 1, tcp_frame(client, SERVER, 45000, 80, isn + 1, ACK | PSH, request(0))
    yield t + 2, tcp_frame(client, SERVER, 45000, 80, isn + 1 + len(request(0)), ACK | FIN)


def oversized_requests() -> list[bytes]:
    """HTTP requests to a tracker that hide health data behind size: a head over 64 KiB, a form
    whose last key is over 128 characters, thousands of keys before the telling one, JSON nested
    past the parser's depth."""
    condition = "dl=https%3A%2F%2Fportal.example-hospital.org%2Foncology%2Fchemotherapy-schedule"
    host = "Host: www.facebook.com\r\n"
    form = "glucose=487+mg%2FdL&" + "k" * 300 + "=1"
    many = "&".join(f"k{i}=v" for i in range(6000)) + "&" + condition
    deep: object = {"diagnosis": "type 2 diabetes mellitus with hyperglycemia", "glucose": "487 mg/dL"}
    for _ in range(60):
        deep = {"d": deep}
    deep_body = json.dumps(deep)
    return [
        f"GET /tr?id=1&ev=PageView&{condition} HTTP/1.1\r\n{host}Cookie: {'c' * 70_000}\r\n\r\n".encode(),
        f"GET /tr?id=1&ev=PageView&pad={'p' * 70_000}&{condition} HTTP/1.1\r\n{host}\r\n".encode(),
        f"POST /tr HTTP/1.1\r\nX-Pad: {'x' * 70_000}\r\n{host}Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(form)}\r\n\r\n{form}".encode(),
        f"POST /tr HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(form)}\r\n\r\n{form}".encode(),
        f"GET /tr?id=1&{many} HTTP/1.1\r\n{host}\r\n".encode(),
        f"POST /tr HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: {len(deep_body)}\r\n\r\n"
        f"{deep_body}".encode(),
    ]


def request_frames(requests: list[bytes], t0: int = 1_700_000_000_000_000) -> Iterator[tuple[int, bytes]]:
    """Each request on its own connection from its own client (port 41000 + its index), in
    1,400-byte segments."""
    for n, data in enumerate(requests):
        client = bytes([10, 20, 1 + n // 250 % 250, 1 + n % 250])
        sport, isn = 41000 + n % 20000, (7000 + n * 100_000) % (1 << 32)
        t = t0 + n * 1_000_000
        yield t, tcp_frame(client, SERVER, sport, 80, isn, SYN)
        for i in range(0, len(data), 1400):
            t += 1
            yield t, tcp_frame(client, SERVER, sport, 80, isn + 1 + i, ACK | PSH, data[i : i + 1400])
        yield t + 1, tcp_frame(client, SERVER, sport, 80, isn + 1 + len(data), ACK | FIN)


def write(path: Path, frames: Iterator[tuple[int, bytes]]) -> int:
    out = FastPcap(path)
    for ts, frame in frames:
        out.write(ts, frame)
    out.close()
    return out.count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    rev = sub.add_parser("reverse")
    rev.add_argument("out", type=Path)
    rev.add_argument("--segments", type=int, default=20_000)
    rev.add_argument("--streams", type=int, default=1)
    flood = sub.add_parser("synflood")
    flood.add_argument("out", type=Path)
    flood.add_argument("--flows", type=int, default=1_000_000)
    sub.add_parser("oversized").add_argument("out", type=Path)
    data = sub.add_parser("dataflood")
    data.add_argument("out", type=Path)
    data.add_argument("--flows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.kind == "reverse":
        count = write(args.out, reverse_frames(args.segments, args.streams))
    elif args.kind == "synflood":
        count = write(args.out, synflood_frames(args.flows))
    elif args.kind == "dataflood":
        count = write(args.out, dataflood_frames(args.flows))
    else:
        count = write(args.out, request_frames(oversized_requests()))
    print(f"{args.out}: {count} packets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
