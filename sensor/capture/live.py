"""Live capture on Linux: an AF_PACKET socket with a kernel BPF filter, PACKET_FANOUT across
worker processes and a TPACKET_V3 ring.

The kernel drops what cannot matter (bulk TLS data, bare ACKs: about 94% of a busy uplink)
before a single byte is copied to user space; only the rest reaches Python.

Why a TPACKET_V3 ring: unfiltered, with the same 64 MiB, a ring held every packet of a
1M-packet burst sent at ~580k packets/s while a socket receive queue dropped 5 to 7% of it (the
queue is charged a whole socket buffer per packet, ~2.5 KiB for a 1.4 KiB frame; the ring packs
frames). With the built-in filter both keep up. The ring also hands over the kernel timestamp and
the stripped VLAN tag with each frame, with no extra system call. See docs/live.md.

VLAN tags: the kernel strips the outer 802.1Q tag into packet metadata before any tap sees the
frame, so the kernel filter sees untagged frames (an inner QinQ tag stays in the frame, which
the filter's `vlan` branch handles). Frames handed to the decoder get the tag back, as in a
capture file.

A second, small socket outside the fanout group can follow DNS only (port 53): with several
workers, fanout sends each DNS answer to one worker, but every worker needs every answer to
attribute flows that carry no name.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import logging
import mmap
import select
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from sensor.capture.bpf import default_filter
from sensor.decode.packet import LINKTYPE_ETHERNET
from sensor.errors import EXIT_CAPTURE, SensorError

log = logging.getLogger("phi_sensor")

LINKTYPE_RAW = 101  # raw IPv4/IPv6 (tun and WireGuard interfaces)

# <linux/if_ether.h>, <linux/if_packet.h>, <asm-generic/socket.h>, <linux/if_arp.h>
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments first, so they all reach one worker
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
TP_STATUS_USER = 0x1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
BPF_MAXINSNS = 4096
ETH_P_8021Q = 0x8100
_ARPHRD_LINKTYPES = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 519: LINKTYPE_RAW, 0xFFFE: LINKTYPE_RAW}
_TCPDUMP_LINKTYPE_NAMES = {LINKTYPE_ETHERNET: "EN10MB", LINKTYPE_RAW: "RAW"}
# Errors after which the interface is gone or down, not the sensor broken.
INTERFACE_GONE = frozenset({errno.ENETDOWN, errno.ENXIO, errno.ENODEV})

RING_BLOCK_BYTES = 1 << 20
RING_FRAME_BYTES = 2048  # only a consistency unit for TPACKET_V3: frames are variable-length
RING_RETIRE_MS = 50  # a partly filled block is handed over after this long: alert latency bound
RECV_BUFFER_BYTES = 8 << 20
MAX_FRAME = 262_144
MAX_RECV_BATCH = 1024
MAX_RING_BATCH = 8  # blocks per read: the loop comes back to signals and timers in between
RETRY_SECONDS = 1.0

# struct tpacket_block_desc + tpacket_hdr_v1: block_status, num_pkts, offset_to_first_pkt
_BLOCK_HEADER = struct.Struct("<8xIII")
BLOCK_HEADER_BYTES = 48
# struct tpacket3_hdr up to hv1: next_offset, sec, nsec, snaplen, len, status, mac, net, rxhash, vlan_tci, vlan_tpid
_PACKET_HEADER = struct.Struct("<IIIIIIHHIIH")
# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
_AUXDATA = struct.Struct("<IIIHHHH")
_TIMESPEC = struct.Struct("@qq")
_VLAN_TAG = struct.Struct("!HH")


class LiveCaptureError(SensorError):
    """The interface cannot be captured on (missing, wrong link type, no permission, bad filter)."""

    exit_code = EXIT_CAPTURE


@dataclass(frozen=True, slots=True)
class BpfProgram:
    """A classic BPF program as the kernel takes it: packed `struct sock_filter` instructions."""

    expression: str
    instructions: bytes
    length: int


# -- sans-IO helpers ---------------------------------------------------------------------------
def parse_bpf_listing(text: str) -> list[tuple[int, int, int, int]]:
    """Parse `tcpdump -ddd` output (a count line, then `code jt jf k` per line).

    Raises ValueError when the listing is malformed, empty, longer than the kernel accepts, or
    a jump leaves the program.
    """
    lines = text.split()
    if not lines or not lines[0].isdigit():
        raise ValueError("expected an instruction count")
    count = int(lines[0])
    if not 0 < count <= BPF_MAXINSNS:
        raise ValueError(f"expected 1 to {BPF_MAXINSNS} instructions, found {count}")
    fields = lines[1:]
    if len(fields) != 4 * count or not all(field.isdigit() for field in fields):
        raise ValueError(f"expected {count} instructions of four numbers")
    out = []
    for index in range(count):
        code, jt, jf, k = (int(field) for field in fields[4 * index:4 * index + 4])
        if code > 0xFFFF or jt > 0xFF or jf > 0xFF or k > 0xFFFFFFFF:
            raise ValueError(f"instruction {index}: field out of range")
        if index + 1 + max(jt, jf) > count:
            raise ValueError(f"instruction {index}: jump past the end of the program")
        out.append((code, jt, jf, k))
    return out


def pack_bpf(instructions: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(struct.pack("=HBBI", *insn) for insn in instructions)


def insert_vlan_tag(frame: bytes, tci: int, tpid: int = ETH_P_8021Q) -> bytes:
    """Put back the 802.1Q tag the kernel moved into metadata (after the two MAC addresses)."""
    if len(frame) < 12:
        return frame
    return frame[:12] + _VLAN_TAG.pack(tpid or ETH_P_8021Q, tci & 0xFFFF) + frame[12:]


def parse_block(buf: bytes | mmap.mmap, start: int, size: int, ethernet: bool = True) -> list[tuple[float, bytes]]:
    """The (timestamp, frame) pairs of one TPACKET_V3 block at buf[start:start + size].

    Never reads outside the block: a header that points outside it ends the walk.
    """
    end = start + size
    if start < 0 or size < BLOCK_HEADER_BYTES or end > len(buf):
        return []
    _status, count, first = _BLOCK_HEADER.unpack_from(buf, start)
    frames: list[tuple[float, bytes]] = []
    pos = start + first
    header = _PACKET_HEADER.size
    for _ in range(count):
        if pos < start + BLOCK_HEADER_BYTES or pos + header > end:
            break
        step, sec, nsec, snaplen, _length, status, mac, _net, _hash, tci, tpid = _PACKET_HEADER.unpack_from(buf, pos)
        low = pos + mac
        high = low + snaplen
        if mac < header or high > end:
            break
        frame = buf[low:high]
        if ethernet and status & TP_STATUS_VLAN_VALID:
            frame = insert_vlan_tag(frame, tci, tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q)
        frames.append((sec + nsec * 1e-9, frame))
        if step < header:  # 0 marks the last frame; anything else this small is not a real offset
            break
        pos += step
    return frames


def frame_from_recvmsg(data: bytes, ancillary: list[tuple[int, int, bytes]], fallback_ts: float,
                       ethernet: bool = True) -> tuple[float, bytes]:
    """A frame read with recvmsg: kernel timestamp (SO_TIMESTAMPNS) and VLAN tag (PACKET_AUXDATA)."""
    ts = fallback_ts
    frame = data
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            ts = sec + nsec * 1e-9
        elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
            status, _length, _snaplen, _mac, _net, tci, tpid = _AUXDATA.unpack_from(payload)
            if ethernet and status & TP_STATUS_VLAN_VALID:
                frame = insert_vlan_tag(data, tci, tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q)
    return ts, frame


# -- filter compilation --------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)  # every worker compiles the same expressions
def compile_filter(expression: str, linktype: int = LINKTYPE_ETHERNET) -> BpfProgram:
    """Compile a pcap filter expression to kernel BPF with tcpdump (libpcap's optimiser)."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise LiveCaptureError("tcpdump is needed to compile the capture filter (install it, or use --no-bpf)")
    name = _TCPDUMP_LINKTYPE_NAMES.get(linktype)
    if name is None:
        raise LiveCaptureError(f"no capture filter for link type {linktype}")
    try:
        proc = subprocess.run([tcpdump, "-ddd", "-y", name, expression], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LiveCaptureError(f"cannot run tcpdump to compile the capture filter: {exc}") from None
    if proc.returncode != 0:
        problem = [line for line in proc.stderr.splitlines() if "data link type" not in line]
        raise LiveCaptureError(f"capture filter: {'; '.join(problem[-2:]) or 'tcpdump refused it'}")
    try:
        instructions = parse_bpf_listing(proc.stdout)
    except ValueError as exc:
        raise LiveCaptureError(f"capture filter: {exc}") from None
    return BpfProgram(expression, pack_bpf(instructions), len(instructions))


def dns_filter(linktype: int) -> str:
    """DNS only, for the side channel: untagged, or under a tag the kernel left in the frame (QinQ)."""
    return "port 53 or (vlan and port 53)" if linktype == LINKTYPE_ETHERNET else "port 53"


# -- sockets -----------------------------------------------------------------------------------
def interface_linktype(interface: str) -> int:
    """The pcap link type of an interface, from the hardware type its packet socket reports."""
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as probe:
            probe.bind((interface, 0))  # protocol 0: resolves the interface, receives nothing
            hatype = probe.getsockname()[3]
    except PermissionError:
        raise LiveCaptureError(f"{interface}: capturing needs root or CAP_NET_RAW") from None
    except OSError as exc:
        raise LiveCaptureError(f"{interface}: cannot capture: {exc.strerror or exc}") from None
    linktype = _ARPHRD_LINKTYPES.get(hatype)
    if linktype is None:
        raise LiveCaptureError(f"{interface}: unsupported hardware type {hatype} (Ethernet or raw IP expected)")
    return linktype


class PacketSocket:
    """One AF_PACKET socket on one interface: a kernel filter, then a TPACKET_V3 ring of
    `buffer_bytes`, or a receive queue of that size read with recvmsg."""

    def __init__(
        self,
        interface: str,
        linktype: int,
        program: BpfProgram | None,
        *,
        buffer_bytes: int = RECV_BUFFER_BYTES,
        ring: bool = False,
        fanout_group: int | None = None,
        promiscuous: bool = True,
    ) -> None:
        self.interface = interface
        self.ethernet = linktype == LINKTYPE_ETHERNET
        self.program = program
        self.buffer_bytes = buffer_bytes
        self.ring = ring
        self.fanout_group = fanout_group
        self.promiscuous = promiscuous
        self.sock: socket.socket | None = None
        self.ifindex = 0
        self.kernel_packets = 0
        self.kernel_drops = 0
        self._ring: mmap.mmap | None = None
        self._blocks = 0
        self._next_block = 0

    def open(self) -> None:
        # Protocol 0 until the filter is attached: no unfiltered packet can queue up before it.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if self.program is not None:
                code = ctypes.create_string_buffer(self.program.instructions)
                fprog = struct.pack("HP", self.program.length, ctypes.addressof(code))
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            if self.ring:
                self._blocks = max(self.buffer_bytes // RING_BLOCK_BYTES, 2)
                sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                request = struct.pack(
                    "IIIIIII", RING_BLOCK_BYTES, self._blocks, RING_FRAME_BYTES,
                    RING_BLOCK_BYTES // RING_FRAME_BYTES * self._blocks, RING_RETIRE_MS, 0, 0,
                )
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
                self._ring = mmap.mmap(sock.fileno(), RING_BLOCK_BYTES * self._blocks)
                self._next_block = 0
            else:
                _set_receive_buffer(sock, self.buffer_bytes)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
                sock.setblocking(False)
            sock.bind((self.interface, ETH_P_ALL))
            self.ifindex = socket.if_nametoindex(self.interface)
            if self.promiscuous:  # a span or mirror port delivers frames addressed to other hosts
                membership = struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
            if self.fanout_group is not None:
                mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
                argument = struct.pack("I", (self.fanout_group & 0xFFFF) | (mode << 16))  # unsigned: the flag is bit 31
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, argument)
        except BaseException:
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def pending_error(self) -> int:
        """The socket's pending error (cleared by reading it), e.g. ENETDOWN."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if self.sock is not None else 0

    def read(self) -> list[tuple[float, bytes]]:
        """What is ready now, without waiting. Raises OSError when the socket reports an error."""
        return self._read_ring() if self._ring is not None else self._read_queue()

    def _read_ring(self) -> list[tuple[float, bytes]]:
        ring = self._ring
        assert ring is not None
        frames: list[tuple[float, bytes]] = []
        for _ in range(min(self._blocks, MAX_RING_BATCH)):
            offset = self._next_block * RING_BLOCK_BYTES
            if not ring[offset + 8] & TP_STATUS_USER:
                break
            frames.extend(parse_block(ring, offset, RING_BLOCK_BYTES, self.ethernet))
            struct.pack_into("<I", ring, offset + 8, 0)  # TP_STATUS_KERNEL: the block goes back to the kernel
            self._next_block = (self._next_block + 1) % self._blocks
        return frames

    def _read_queue(self) -> list[tuple[float, bytes]]:
        sock = self.sock
        assert sock is not None
        frames = []
        space = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)
        for _ in range(MAX_RECV_BATCH):
            try:
                data, ancillary, _flags, _address = sock.recvmsg(MAX_FRAME, space)
            except BlockingIOError:
                break
            frames.append(frame_from_recvmsg(data, ancillary, time.time(), self.ethernet))
        return frames

    def is_up(self) -> bool:
        """The interface exists under its name with the index this socket was bound to, and is up."""
        try:
            if socket.if_nametoindex(self.interface) != self.ifindex or self.sock is None:
                return False
            request = struct.pack("16sh", self.interface.encode()[:15], 0)
            flags = struct.unpack_from("16sh", fcntl.ioctl(self.sock, SIOCGIFFLAGS, request))[1]
        except OSError:
            return False
        return bool(flags & IFF_UP)

    def collect_statistics(self) -> None:
        """Add the kernel's counters since the last read (reading resets them) to the totals."""
        if self.sock is None:
            return
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        except OSError:
            return
        packets, drops = struct.unpack_from("II", raw)
        self.kernel_packets += packets  # counts the dropped ones too
        self.kernel_drops += drops

    def close(self, collect: bool = True) -> None:
        """Close; `collect=False` leaves the kernel's counters to another process sharing the socket."""
        if collect:
            self.collect_statistics()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # past rmem_max: needs CAP_NET_ADMIN
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class LiveCapture:
    """The capture for one worker: the main socket (a fanout group member when there are several
    workers) and, optionally, the DNS side channel. Survives the interface going down and up."""

    def __init__(
        self,
        interface: str,
        *,
        expression: str | None = None,
        filtered: bool = True,
        fanout_group: int | None = None,
        dns_side_channel: bool = False,
        buffer_bytes: int = 64 << 20,
        ring: bool = True,
        promiscuous: bool = True,
    ) -> None:
        self.interface = interface
        self.linktype = interface_linktype(interface)
        program = None
        if filtered:
            program = compile_filter(expression or default_filter(self.linktype), self.linktype)
        self.main = PacketSocket(
            interface, self.linktype, program, buffer_bytes=buffer_bytes, ring=ring, fanout_group=fanout_group,
            promiscuous=promiscuous,
        )
        self.side: PacketSocket | None = None
        if dns_side_channel:
            side_program = compile_filter(dns_filter(self.linktype), self.linktype)
            self.side = PacketSocket(interface, self.linktype, side_program, promiscuous=promiscuous)
        self.down = False
        self.down_events = 0
        self._poller = select.poll()
        self._next_check = 0.0

    @property
    def sockets(self) -> list[PacketSocket]:
        return [self.main] if self.side is None else [self.main, self.side]

    def open(self) -> None:
        try:
            for sock in self.sockets:
                sock.open()
        except PermissionError:
            self.close()
            raise LiveCaptureError(f"{self.interface}: capturing needs root or CAP_NET_RAW") from None
        except OSError as exc:
            self.close()
            raise LiveCaptureError(f"{self.interface}: cannot capture: {exc.strerror or exc}") from None
        self._poller = select.poll()
        for sock in self.sockets:
            self._poller.register(sock.fileno(), select.POLLIN | select.POLLERR)

    def read(self, timeout: float) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
        """(packets, DNS side-channel packets), waiting at most `timeout` seconds for either."""
        if self.down:
            self._wait_for_interface(timeout)
            return [], []
        try:
            for _fd, event in self._poller.poll(timeout * 1000):
                if event & select.POLLERR:
                    self._check_errors()
            # DNS first: an answer must be in the cache before the flows that follow it.
            side = self.side.read() if self.side is not None else []
            return self.main.read(), side
        except OSError as exc:
            if exc.errno in INTERFACE_GONE:
                self._went_down()
                return [], []
            raise LiveCaptureError(f"{self.interface}: capture failed: {exc.strerror or exc}") from None

    def _check_errors(self) -> None:
        for sock in self.sockets:
            code = sock.pending_error()
            if code:
                raise OSError(code, errno.errorcode.get(code, str(code)))

    def _went_down(self) -> None:
        self.down = True
        self.down_events += 1
        self._next_check = time.monotonic() + RETRY_SECONDS
        log.warning("%s: interface is down; capture resumes when it is back (checking every second)", self.interface)

    def _wait_for_interface(self, timeout: float) -> None:
        now = time.monotonic()
        if now < self._next_check:
            time.sleep(min(timeout, self._next_check - now))
            return
        self._next_check = now + RETRY_SECONDS
        if self.main.sock is not None and self.main.is_up():
            # Same interface back up: the kernel has put the sockets (and their fanout group) back.
            for sock in self.sockets:
                sock.pending_error()
            self.down = False
            log.info("%s: interface is up; capture resumed", self.interface)
            return
        try:
            index = socket.if_nametoindex(self.interface)
        except OSError:
            return  # still gone
        if self.main.sock is None or index != self.main.ifindex:
            self._reopen()

    def _reopen(self) -> None:
        """The interface was removed and created again: its old sockets are dead, open new ones."""
        for sock in self.sockets:
            sock.close()
        try:
            for sock in self.sockets:
                sock.open()
        except PermissionError:
            raise LiveCaptureError(
                f"{self.interface}: the interface was recreated and reopening it needs CAP_NET_RAW; restart the sensor"
            ) from None
        except OSError as exc:
            # Fanout members of the old interface may still be closing in other workers: try again.
            for sock in self.sockets:
                sock.close()
            log.debug("%s: reopening failed (%s); retrying", self.interface, exc)
            return
        self._poller = select.poll()
        for sock in self.sockets:
            self._poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        self.down = False
        log.info("%s: interface is back; capture resumed", self.interface)

    def kernel_stats(self) -> dict[str, int]:
        for sock in self.sockets:
            sock.collect_statistics()
        out = {"packets": self.main.kernel_packets, "drops": self.main.kernel_drops}
        if self.side is not None:
            out["dns_side_packets"] = self.side.kernel_packets
            out["dns_side_drops"] = self.side.kernel_drops
        return out

    def close(self, collect: bool = True) -> None:
        for sock in self.sockets:
            sock.close(collect)
