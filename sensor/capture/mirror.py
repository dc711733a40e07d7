"""A mirror target without a span port: cloud traffic mirroring delivered on a UDP socket.

AWS VPC Traffic Mirroring and Azure virtual network TAP send each mirrored packet to a target
inside VXLAN (UDP 4789); a Geneve target (UDP 6081) receives what AWS Gateway Load Balancer
forwards. `phi-sensor live --listen vxlan://0.0.0.0:4789` binds that port and feeds the inner
frames to the same decode, detection and outputs as a capture; docs/tunnels.md tells how to point
a mirror session at it. No privileges are needed (beyond binding a port below 1024).

The listener has the read/close/stats surface of `capture.live.LiveCapture`. Each datagram's
tunnel header is stepped over here (with the decoder's own steps) and the inner packet handed on
as an Ethernet frame; the datagrams received, decapsulated and dropped (no valid header, or no
Ethernet or IP inside) are counted.
"""
from __future__ import annotations

import select
import socket
import time
from urllib.parse import urlsplit

from sensor.capture.live import LiveCaptureError
from sensor.decode.packet import ETH_FRAME, ETH_IPV4, ETH_IPV6, LINKTYPE_ETHERNET, UDP_TUNNEL_KINDS
from sensor.errors import ConfigError

LISTEN_SCHEMES = {"vxlan": 4789, "geneve": 6081}  # scheme -> default port
MAX_DATAGRAM = 65535
BATCH = 512  # datagrams taken per read before the decoder runs
_IP_ETHER_HEADER = {ETH_IPV4: b"\0" * 12 + b"\x08\x00", ETH_IPV6: b"\0" * 12 + b"\x86\xdd"}


def parse_listen(url: str) -> tuple[str, str, int]:
    """`vxlan://HOST:PORT` or `geneve://[HOST]:PORT` -> (kind, host, port); the port is optional."""
    parts = urlsplit(url)
    if parts.scheme not in LISTEN_SCHEMES or parts.path not in ("", "/") or parts.query:
        raise ConfigError("command line", "--listen", f"expected vxlan://HOST[:PORT] or geneve://HOST[:PORT], got {url!r}")
    try:
        port = parts.port or LISTEN_SCHEMES[parts.scheme]
    except ValueError:
        raise ConfigError("command line", "--listen", f"bad port in {url!r}") from None
    return parts.scheme, parts.hostname or "0.0.0.0", port


class MirrorListener:
    """Receives VXLAN or Geneve datagrams and yields their inner frames (link type Ethernet)."""

    linktype = LINKTYPE_ETHERNET
    side = None  # no DNS side channel: one socket carries everything
    down = False
    down_events = 0

    def __init__(self, url: str, buffer_bytes: int = 64 << 20) -> None:
        self.kind, self.host, self.port = parse_listen(url)
        self.interface = f"{self.kind}://{self.host}:{self.port}"
        self.buffer_bytes = buffer_bytes
        self._step = UDP_TUNNEL_KINDS[self.kind]
        self.sock: socket.socket | None = None
        self.received = self.decapsulated = self.dropped = 0

    def open(self) -> None:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
            family, _type, _proto, _name, address = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_bytes)
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise LiveCaptureError(f"{self.interface}: cannot listen: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]  # port 0 asks for any free one (tests)

    def read(self, timeout: float) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
        """(inner frames, no side-channel packets), waiting at most `timeout` seconds."""
        if self.sock is None:
            return [], []
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return [], []
        frames: list[tuple[float, bytes]] = []
        now = time.time()
        recv = self.sock.recv
        for _ in range(BATCH):
            try:
                datagram = recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                raise LiveCaptureError(f"{self.interface}: receive failed: {exc.strerror or exc}") from None
            self.received += 1
            frame = self.inner_frame(datagram)
            if frame is None:
                self.dropped += 1
                continue
            self.decapsulated += 1
            frames.append((now, frame))
        return frames, []

    def inner_frame(self, datagram: bytes) -> bytes | None:
        """The Ethernet frame a datagram carries (an IP packet gets a blank Ethernet header), or None."""
        found = self._step(datagram, 0)
        if found is None:
            return None
        kind, off = found
        if off >= len(datagram):
            return None
        if kind == ETH_FRAME:
            return datagram[off:] if len(datagram) >= off + 14 else None
        header = _IP_ETHER_HEADER.get(kind)
        return header + datagram[off:] if header is not None else None

    def kernel_stats(self) -> dict[str, int]:
        return {
            "packets": self.received,
            "drops": self.dropped,
            "datagrams_received": self.received,
            "datagrams_decapsulated": self.decapsulated,
            "datagrams_dropped": self.dropped,
        }

    def close(self, collect: bool = True) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
