"""Replay prefilter: libpcap (through tcpdump) applies the BPF filter in C, on the other core,
and hands Python a pcap stream holding only the packets that can matter."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import BinaryIO

from sensor.capture.bpf import default_filter
from sensor.capture.pcap import GZIP_MAGIC, PCAP_MAGICS

AUTO_MIN_BYTES = 64 << 20  # below this, starting tcpdump costs more than it saves


def tcpdump_path() -> str | None:
    return shutil.which("tcpdump")


def capture_linktype(path: Path) -> int | None:
    """Link type of a classic pcap file (also gzip-compressed); None for pcapng or unreadable files."""
    import gzip

    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw  # type: ignore[assignment]
            header = stream.read(24)
    except (OSError, EOFError):
        return None
    if len(header) < 24 or header[:4] not in PCAP_MAGICS:
        return None
    endian, _ = PCAP_MAGICS[header[:4]]
    return struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF


def should_prefilter(path: Path, mode: str) -> bool:
    """'never', 'always' (when possible), or 'auto': large classic pcap files with tcpdump installed."""
    if mode == "never" or tcpdump_path() is None or capture_linktype(path) is None:
        return False
    if mode == "always":
        return True
    try:
        return path.stat().st_size >= AUTO_MIN_BYTES
    except OSError:
        return False


class Prefilter:
    """A running tcpdump (fed by gzip -dc for compressed files) whose stdout is the filtered pcap."""

    def __init__(self, path: Path) -> None:
        linktype = capture_linktype(path)
        if linktype is None:
            raise ValueError(f"{path}: not a classic pcap file")
        self.expression = default_filter(linktype)
        with open(path, "rb") as probe:
            compressed = probe.read(2) == GZIP_MAGIC
        self._gunzip: subprocess.Popen | None = None
        source = "-" if compressed else str(path)
        stdin = None
        if compressed:
            self._gunzip = subprocess.Popen(["gzip", "-dc", str(path)], stdout=subprocess.PIPE)
            stdin = self._gunzip.stdout
        self.process = subprocess.Popen(
            [tcpdump_path() or "tcpdump", "-n", "-r", source, "-w", "-", self.expression],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=1 << 20,
        )
        if self._gunzip is not None and self._gunzip.stdout is not None:
            self._gunzip.stdout.close()  # tcpdump owns the read end now
        widen_pipe(self.stdout.fileno())

    @property
    def stdout(self) -> BinaryIO:
        assert self.process.stdout is not None
        return self.process.stdout  # type: ignore[return-value]

    def bytes_read(self) -> int | None:
        """How far tcpdump has read its input (Linux /proc), for the progress bar."""
        try:
            for line in Path(f"/proc/{self.process.pid}/io").read_text().splitlines():
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def close(self) -> str | None:
        """Wait for tcpdump; return its complaint (truncated file, ...) or None."""
        self.stdout.close()
        stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        code = self.process.wait()
        if self._gunzip is not None:
            self._gunzip.wait()
        if code != 0:
            lines = [l for l in stderr.splitlines() if l and not l.startswith("reading from file")]
            return "; ".join(lines[-2:]) or f"tcpdump exited with status {code}"
        return None


_F_SETPIPE_SZ = 1031  # Linux fcntl: pipe capacity


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe lets the writer run ahead instead of waking the reader for every 64 KiB."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works
