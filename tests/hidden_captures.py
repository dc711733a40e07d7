"""Captures of TLS, HTTP and host names where they hide, made with real clients on loopback.

    python3 tests/hidden_captures.py OUTDIR     (root: tcpdump captures on lo)

Each scenario runs a scripted plaintext server and a real client (the standard library's smtplib,
imaplib, poplib and ftplib with STARTTLS; curl through a CONNECT proxy; hand-written openings
for XMPP, LDAP, PostgreSQL, MySQL, RDP and WebSocket) whose ClientHello is OpenSSL's own. The
local-link name protocols (mDNS, LLMNR, NetBIOS name service) are built with scapy. The
committed captures in tests/data/ were made with this script; tests/test_hidden_protocols.py
reads them and, when run with the slow tests, makes them again.
"""
from __future__ import annotations

import contextlib
import ftplib
import http.client
import imaplib
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# The server name each client puts in its hello, and the plaintext protocol before it.
EXPECTED: dict[str, dict[str, str]] = {
    "starttls.pcap": {
        "smtp.upgrade.test": "smtp", "imap.upgrade.test": "imap", "pop.upgrade.test": "pop3",
        "ftp.upgrade.test": "ftp", "xmpp.upgrade.test": "xmpp", "ldap.upgrade.test": "ldap",
    },
    "negotiated-tls.pcap": {
        "db.upgrade.test": "postgresql", "mysql.upgrade.test": "mysql", "rdp.upgrade.test": "rdp",
    },
    "proxy-tunnels.pcap": {
        "portal.upgrade.test": "http-connect", "ws.upgrade.test": "websocket",
    },
}
# HTTP requests as sent (method, target), the CONNECT ones included.
EXPECTED_HTTP: dict[str, set[tuple[str, str]]] = {
    "proxy-tunnels.pcap": {("CONNECT", "portal.upgrade.test:443"), ("CONNECT", "plain.upgrade.test:80"),
                           ("GET", "/inside-tunnel"), ("GET", "/chat")},
    "http-methods.pcap": {("QUERY", "/search?q=1"), ("PROPFIND", "/dav/"), ("BREW", "/pot-1"),
                          ("GET", "/legacy-0.9")},
}


class NamedContext(ssl.SSLContext):
    """A client context that names `server_name` in its hello whatever host the client dialled."""

    server_name = "localhost"

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,  # type: ignore[override]
                    suppress_ragged_eofs=True, server_hostname=None, session=None):
        return super().wrap_socket(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
                                   self.server_name, session)


def client_context(name: str) -> NamedContext:
    context = NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.server_name = name
    return context


def server_context(workdir: Path) -> ssl.SSLContext:
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=upgrade.test", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class Server:
    """A one-thread TCP server on loopback running `handler(conn)` for each connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                conn.settimeout(5)
                self.handler(conn)

    def close(self) -> None:
        self.sock.close()


def read_line(conn: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return line


def tls_then_close(conn: socket.socket, tls: ssl.SSLContext) -> None:
    with tls.wrap_socket(conn, server_side=True) as secure:
        secure.settimeout(2)
        with contextlib.suppress(OSError, ssl.SSLError):
            secure.recv(100)


def line_server(tls: ssl.SSLContext, greeting: bytes, replies: dict[bytes, bytes], upgrade: bytes,
                tagged: bool = False) -> Callable[[socket.socket], None]:
    """A line protocol: answer each command by its first word; the `upgrade` command starts TLS."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(greeting)
        while line := read_line(conn):
            words = line.split()
            tag, command = (words[0] + b" ", words[1:2]) if tagged and len(words) > 1 else (b"", words[:1])
            command_word = command[0].upper() if command else b""
            reply = replies.get(command_word, b"OK\r\n")
            conn.sendall(reply.replace(b"{tag}", tag))
            if command_word == upgrade or b" ".join(words).upper() == upgrade:
                tls_then_close(conn, tls)
                return

    return handle


def exchange_server(tls: ssl.SSLContext, greeting: bytes, reply: bytes, size: int) -> Callable[[socket.socket], None]:
    """A binary opening: an optional greeting, `size` bytes from the client, one reply, then TLS."""

    def handle(conn: socket.socket) -> None:
        if greeting:
            conn.sendall(greeting)
        got = b""
        while len(got) < size:
            chunk = conn.recv(size - len(got))
            if not chunk:
                return
            got += chunk
        conn.sendall(reply)
        tls_then_close(conn, tls)

    return handle


def raw_client(port: int, name: str, opening: bytes, reply_size: int, greeting_size: int = 0) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if greeting_size:
            sock.recv(greeting_size)
        sock.sendall(opening)
        sock.recv(reply_size)
        with contextlib.suppress(OSError, ssl.SSLError):
            with client_context(name).wrap_socket(sock) as secure:
                secure.sendall(b"x")


@contextlib.contextmanager
def capture(path: Path, ports: list[int]) -> Iterator[None]:
    expression = " or ".join(f"tcp port {port}" for port in ports)
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w", str(path), expression],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert tcpdump.stderr is not None
    tcpdump.stderr.readline()  # "listening on lo ...": the capture is armed
    try:
        yield
    finally:
        time.sleep(0.5)
        tcpdump.terminate()
        tcpdump.wait(10)
    dropped = re.search(rb"([0-9]+) packets? dropped by kernel", tcpdump.stderr.read())
    if dropped is None or int(dropped.group(1)):
        raise CaptureIncomplete(f"{path.name}: tcpdump lost packets")


class CaptureIncomplete(RuntimeError):
    """The kernel dropped packets of a capture (a busy machine): make it again."""


def retried(make: Callable[[], None], attempts: int = 3) -> None:
    for attempt in range(attempts):
        try:
            make()
            return
        except CaptureIncomplete:
            if attempt == attempts - 1:
                raise


def starttls(outdir: Path, tls: ssl.SSLContext) -> None:
    smtp = Server(line_server(tls, b"220 mx ESMTP\r\n", {b"EHLO": b"250-mx\r\n250 STARTTLS\r\n",
                                                         b"STARTTLS": b"220 go ahead\r\n"}, b"STARTTLS"))
    imap = Server(line_server(tls, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
                              {b"CAPABILITY": b"* CAPABILITY IMAP4rev1 STARTTLS\r\n{tag}OK done\r\n",
                               b"STARTTLS": b"{tag}OK begin TLS\r\n"}, b"STARTTLS", tagged=True))
    pop = Server(line_server(tls, b"+OK ready\r\n", {b"CAPA": b"+OK\r\nSTLS\r\n.\r\n", b"STLS": b"+OK begin\r\n"},
                             b"STLS"))
    ftp = Server(line_server(tls, b"220 ftp ready\r\n", {b"AUTH": b"234 AUTH TLS ok\r\n"}, b"AUTH TLS"))
    xmpp = Server(exchange_server(tls, b"", b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                  b"</stream:features><proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", len(XMPP)))
    ldap = Server(exchange_server(tls, b"", LDAP_RESPONSE, len(LDAP_STARTTLS)))
    servers = [smtp, imap, pop, ftp, xmpp, ldap]
    try:
        with capture(outdir / "starttls.pcap", [s.port for s in servers]):
            with contextlib.suppress(OSError, smtplib.SMTPException, ssl.SSLError):
                with smtplib.SMTP("127.0.0.1", smtp.port, local_hostname="client.upgrade.test", timeout=5) as client:
                    client.starttls(context=client_context("smtp.upgrade.test"))
            with contextlib.suppress(OSError, imaplib.IMAP4.error, ssl.SSLError):
                imaplib.IMAP4("127.0.0.1", imap.port, timeout=5).starttls(ssl_context=client_context("imap.upgrade.test"))
            with contextlib.suppress(OSError, poplib.error_proto, ssl.SSLError):
                poplib.POP3("127.0.0.1", pop.port, timeout=5).stls(context=client_context("pop.upgrade.test"))
            with contextlib.suppress(OSError, ftplib.Error, ssl.SSLError, EOFError):
                ftps = ftplib.FTP_TLS(context=client_context("ftp.upgrade.test"), timeout=5)
                ftps.connect("127.0.0.1", ftp.port)
                ftps.auth()
            raw_client(xmpp.port, "xmpp.upgrade.test", XMPP, 4096)
            raw_client(ldap.port, "ldap.upgrade.test", LDAP_STARTTLS, 4096)
    finally:
        for server in servers:
            server.close()


XMPP = (b"<?xml version='1.0'?><stream:stream to='upgrade.test' version='1.0' xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
_OID = b"1.3.6.1.4.1.1466.20037"
# LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0] OID } } (RFC 4511 4.14.1)
LDAP_STARTTLS = b"\x30" + bytes([len(_OID) + 7]) + b"\x02\x01\x01\x77" + bytes([len(_OID) + 2]) + b"\x80" + \
    bytes([len(_OID)]) + _OID
LDAP_RESPONSE = b"\x30\x0c\x02\x01\x01\x78\x07\x0a\x01\x00\x04\x00\x04\x00"
POSTGRES_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
# A MySQL handshake v10 greeting (enough for a client that only asks for TLS) and the client's
# SSLRequest: capability flags with CLIENT_SSL, max packet size, charset, 23 zero bytes.
MYSQL_GREETING = (lambda body: len(body).to_bytes(3, "little") + b"\x00" + body)(
    b"\x0a8.0.36\x00\x01\x00\x00\x00abcdefgh\x00\xff\xff\x21\x02\x00\xff\xc1\x15" + b"\x00" * 10
    + b"ijklmnopqrst\x00mysql_native_password\x00")
MYSQL_SSL_REQUEST = b"\x20\x00\x00\x01" + (0x000FA68D | 0x0800).to_bytes(4, "little") + \
    (16 << 20).to_bytes(4, "little") + b"\x21" + b"\x00" * 23
# TPKT + X.224 Connection Request with a cookie and RDP_NEG_REQ asking for TLS (MS-RDPBCGR 2.2.1.1)
_RDP_CR = b"\xe0\x00\x00\x00\x00\x00Cookie: mstshash=clinic\r\n\x01\x00\x08\x00\x01\x00\x00\x00"
RDP_REQUEST = b"\x03\x00" + (len(_RDP_CR) + 5).to_bytes(2, "big") + bytes([len(_RDP_CR)]) + _RDP_CR
RDP_CONFIRM = b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x02\x00\x08\x00\x01\x00\x00\x00"


def negotiated(outdir: Path, tls: ssl.SSLContext) -> None:
    postgres = Server(exchange_server(tls, b"", b"S", len(POSTGRES_SSL_REQUEST)))
    mysql = Server(exchange_server(tls, MYSQL_GREETING, b"", len(MYSQL_SSL_REQUEST)))
    rdp = Server(exchange_server(tls, b"", RDP_CONFIRM, len(RDP_REQUEST)))
    servers = [postgres, mysql, rdp]
    try:
        with capture(outdir / "negotiated-tls.pcap", [s.port for s in servers]):
            raw_client(postgres.port, "db.upgrade.test", POSTGRES_SSL_REQUEST, 1)
            with socket.create_connection(("127.0.0.1", mysql.port), timeout=5) as sock:
                sock.recv(len(MYSQL_GREETING))
                sock.sendall(MYSQL_SSL_REQUEST)
                with contextlib.suppress(OSError, ssl.SSLError), client_context("mysql.upgrade.test").wrap_socket(sock):
                    pass
            raw_client(rdp.port, "rdp.upgrade.test", RDP_REQUEST, len(RDP_CONFIRM))
    finally:
        for server in servers:
            server.close()


def proxy_handler(targets: dict[str, int]) -> Callable[[socket.socket], None]:
    """An HTTP CONNECT proxy that sends every authority to the loopback port mapped to its port."""

    def handle(conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        authority = request.split()[1].decode()
        upstream = socket.create_connection(("127.0.0.1", targets[authority.rpartition(":")[2]]), timeout=5)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        relay(conn, upstream)

    return handle


def relay(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join(5)
    b.close()


def http_reply(conn: socket.socket) -> None:
    request = b""
    while b"\n\r\n" not in request and b"\n\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
        if request.count(b"\n") == 1 and request.endswith(b"\n") and b" HTTP/" not in request:
            break  # HTTP/0.9: the request is one line, the answer has no status line
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def tunnels(outdir: Path, tls: ssl.SSLContext) -> None:
    secure = Server(lambda conn: http_reply(tls.wrap_socket(conn, server_side=True)))
    plain = Server(http_reply)
    proxy = Server(proxy_handler({"443": secure.port, "80": plain.port}))
    websocket = Server(websocket_handler)
    servers = [proxy, websocket]
    curl = ["curl", "-s", "-k", "--max-time", "5", "-o", "/dev/null", "-x", f"http://127.0.0.1:{proxy.port}"]
    try:
        with capture(outdir / "proxy-tunnels.pcap", [s.port for s in servers]):
            subprocess.run([*curl, "https://portal.upgrade.test/"], check=False)
            subprocess.run([*curl, "--proxytunnel", "http://plain.upgrade.test/inside-tunnel"], check=False)
            websocket_client(websocket.port)
    finally:
        for server in [*servers, secure, plain]:
            server.close()


def websocket_handler(conn: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def websocket_client(port: int) -> None:
    """A WebSocket tunnel whose binary frames carry a TLS connection (e.g. a browser-based VPN)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    engine = client_context("ws.upgrade.test").wrap_bio(incoming, outgoing, server_hostname="ws.upgrade.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        engine.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: ws.upgrade.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        sock.recv(4096)
        mask = b"\x37\xfa\x21\x3d"
        for piece in (hello[:300], hello[300:]):  # two frames, the hello split across them
            masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(piece))
            length = len(piece)
            header = b"\x82" + (bytes([0x80 | length]) if length < 126 else b"\xfe" + length.to_bytes(2, "big"))
            sock.sendall(header + mask + masked)
        time.sleep(0.2)


def methods(outdir: Path) -> None:
    server = Server(http_reply)
    try:
        with capture(outdir / "http-methods.pcap", [server.port]):
            for method, target in (("QUERY", "/search?q=1"), ("PROPFIND", "/dav/"), ("BREW", "/pot-1")):
                client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                client.request(method, target, body=b"q" if method == "QUERY" else None,
                               headers={"Host": "api.upgrade.test"})
                client.getresponse().read()
                client.close()
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"GET /legacy-0.9\r\n")
                sock.recv(4096)
    finally:
        server.close()


# (protocol, question name, type) of the local-name events, and no others.
EXPECTED_LOCAL_NAMES = {
    ("mdns", "_googlecast._tcp.local", "PTR"), ("mdns", "living-room.local", "A"),
    ("mdns", "_googlecast._tcp.local", "PTR"), ("mdns", "www.google-analytics.com", "A"),
    ("llmnr", "printer", "A"), ("netbios-ns", "FILESERVER", "NB"), ("netbios-ns", "WORKGROUP", "NB"),
}


def local_names(outdir: Path) -> Path:
    """mDNS (a QU query, a multicast answer without questions, a cache-flush record, a query for
    an outside name), LLMNR (query and unicast answer), NetBIOS name service (broadcast queries,
    an answer)."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.netbios import NBNS_ADD_ENTRY, NBNSHeader, NBNSQueryRequest, NBNSQueryResponse
    from scapy.utils import wrpcap

    client, cast, printer, files = "192.168.40.20", "192.168.40.30", "192.168.40.40", "192.168.40.50"

    def suffix(byte: int) -> int:  # the name's 16th byte, first-level encoded as scapy takes it
        return ((0x41 + (byte >> 4)) << 8) | (0x41 + (byte & 0x0F))

    def udp(src: str, dst: str, sport: int, dport: int, payload) -> Ether:
        return Ether(src="02:00:00:00:00:01", dst="01:00:5e:00:00:fb") / IP(src=src, dst=dst) / \
            UDP(sport=sport, dport=dport) / payload

    packets = [
        udp(client, "224.0.0.251", 5353, 5353,
            DNS(id=0, rd=0, qd=DNSQR(qname="_googlecast._tcp.local", qtype="PTR", unicastresponse=1))),
        udp(cast, "224.0.0.251", 5353, 5353, DNS(id=0, qr=1, aa=1, rd=0, qd=[], an=[
            DNSRR(rrname="_googlecast._tcp.local", type="PTR", rclass=1, ttl=120,
                  rdata="Living-Room._googlecast._tcp.local"),
            DNSRR(rrname="living-room.local", type="A", cacheflush=1, ttl=120, rdata=cast)])),
        udp(client, "224.0.0.251", 5353, 5353,
            DNS(id=0, rd=0, qd=DNSQR(qname="www.google-analytics.com", qtype="A"))),
        udp(client, "224.0.0.252", 53001, 5355, DNS(id=0x4242, rd=0, qd=DNSQR(qname="printer", qtype="A"))),
        udp(printer, client, 5355, 53001, DNS(id=0x4242, qr=1, rd=0, qd=DNSQR(qname="printer", qtype="A"),
                                              an=DNSRR(rrname="printer", type="A", ttl=30, rdata=printer))),
        udp(client, "192.168.40.255", 137, 137, NBNSHeader(NAME_TRN_ID=0x1001, NM_FLAGS=0x11, QDCOUNT=1) /
            NBNSQueryRequest(QUESTION_NAME="FILESERVER", SUFFIX=suffix(0x20))),
        udp(files, client, 137, 137, NBNSHeader(NAME_TRN_ID=0x1001, RESPONSE=1, NM_FLAGS=0x50, ANCOUNT=1) /
            NBNSQueryResponse(RR_NAME="FILESERVER", SUFFIX=suffix(0x20), TTL=300,
                              ADDR_ENTRY=[NBNS_ADD_ENTRY(NB_ADDRESS=files)])),
        udp(client, "192.168.40.255", 137, 137, NBNSHeader(NAME_TRN_ID=0x1002, NM_FLAGS=0x11, QDCOUNT=1) /
            NBNSQueryRequest(QUESTION_NAME="WORKGROUP", SUFFIX=suffix(0x1D))),
    ]
    for number, packet in enumerate(packets):
        packet.time = 1_700_000_000 + number * 0.25
    path = outdir / "local-names.pcap"
    wrpcap(str(path), packets)
    return path


def make_all(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = outdir / ".keys"
    workdir.mkdir(exist_ok=True)
    try:
        tls = server_context(workdir)
        retried(lambda: starttls(outdir, tls))
        retried(lambda: negotiated(outdir, tls))
        retried(lambda: tunnels(outdir, tls))
        retried(lambda: methods(outdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return [outdir / name for name in (*EXPECTED, "http-methods.pcap")]


if __name__ == "__main__":
    for made in make_all(Path(sys.argv[1])):
        print(made, made.stat().st_size)
