"""Records tls.pcap + tls.keys, the key-log fixtures of tests/test_deep_keylog.py, with real tools.

Servers on 127.0.0.1 with a throwaway self-signed certificate: Python's http.server behind
ssl (HTTP/1.1) and hypercorn (HTTP/2 over TLS, and HTTP/3 over QUIC when aioquic is installed).
Clients: curl (HTTP/1.1 and --http2, with --resolve so that the requests name the vendors'
hosts), for HTTP/3 aioquic's client and headless Chromium (forced onto QUIC with
--origin-to-force-quic-on; its QPACK encoder uses the dynamic table), all writing their TLS
secrets to the key log (SSLKEYLOGFILE, aioquic's secrets_log_file, Chromium's --ssl-key-log-file).
tcpdump captures the loopback. The keys only ever protected these test connections.

Run: python3 tests/data/deep/make_keylog.py [output dir]
Needs: tcpdump, curl, openssl, hypercorn (pip), aioquic (pip) and chromium for HTTP/3.
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_har import free_port, self_signed, serve  # noqa: E402

MIXPANEL = base64.b64encode(json.dumps({
    "event": "Medication Logged",
    "properties": {"distinct_id": "patient-3131", "medication": "insulin glargine 20 units",
                   "condition": "type 1 diabetes", "email": "maria.test@example.com"},
}).encode()).decode()
AMPLITUDE_GZ = gzip.compress(json.dumps({"api_key": "k", "events": [{
    "event_type": "symptom_checked", "user_id": "patient-3131",
    "event_properties": {"symptom": "shortness of breath", "condition": "congestive heart failure"}}]}).encode())


PAGE = b"""<!doctype html><html><body><p id="d">sending</p><script>
fetch("/2/httpapi", {method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({api_key: "k", events: [{event_type: "rx_viewed", user_id: "patient-3131",
    event_properties: {medication: "naltrexone", condition: "alcohol use disorder"}}]})})
  .then(() => { document.getElementById("d").textContent = "done"; });
</script></body></html>"""


async def app(scope, receive, send) -> None:
    """ASGI app for hypercorn: reads the request body, answers 200 {} (GET /page: the page Chromium loads)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    page = scope["path"] == "/page"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html" if page else b"application/json")]})
    await send({"type": "http.response.body", "body": PAGE if page else b"{}"})


def wait_for(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def curl(keys: Path, port: int, host: str, *args: str, data: bytes | None = None) -> None:
    subprocess.run(["curl", "-sgk", "-o", "/dev/null", "--resolve", f"{host}:{port}:127.0.0.1", *args],
                   input=data, check=True, env={**os.environ, "SSLKEYLOGFILE": str(keys)}, timeout=30)


async def h3_post(port: int, keys: Path, host: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    import ssl

    from aioquic.asyncio import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration

    done = asyncio.get_running_loop().create_future()

    class Client(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)

        def quic_event_received(self, event) -> None:
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, DataReceived | HeadersReceived) and h3_event.stream_ended and not done.done():
                    done.set_result(True)

    with keys.open("a") as secrets:
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host,
                                   verify_mode=ssl.CERT_NONE, secrets_log_file=secrets)
        async with connect("127.0.0.1", port, configuration=config, create_protocol=Client) as client:
            stream = client._quic.get_next_available_stream_id()
            client.h3.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"https"),
                                            (b":authority", host.encode()), (b":path", path.encode()), *headers])
            client.h3.send_data(stream, body, end_stream=True)
            client.transmit()
            await asyncio.wait_for(done, 10)


def chromium_h3(port: int, cert: Path, keys: Path) -> None:
    """Headless Chromium loads a page from api.amplitude.com over HTTP/3; the page posts an event."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], capture_output=True, check=True)
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=der.stdout, capture_output=True,
                          check=True).stdout
    import hashlib

    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    with tempfile.TemporaryDirectory() as profile, tempfile.NamedTemporaryFile() as own_keys:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--enable-quic",
             f"--origin-to-force-quic-on=api.amplitude.com:{port}", "--host-resolver-rules=MAP * 127.0.0.1",
             f"--ignore-certificate-errors-spki-list={pin}", f"--ssl-key-log-file={own_keys.name}",
             "--virtual-time-budget=5000", "--dump-dom", f"https://api.amplitude.com:{port}/page"],
            check=True, capture_output=True, timeout=60,
        )
        with keys.open("ab") as out:
            out.write(Path(own_keys.name).read_bytes())


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    pcap, keys = out_dir / "tls.pcap", out_dir / "tls.keys"
    keys.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        h1 = serve((cert, key))
        p1, p2 = h1.server_address[1], free_port()
        hypercorn = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "--certfile", str(cert), "--keyfile", str(key),
             "--bind", f"127.0.0.1:{p2}", "--quic-bind", f"127.0.0.1:{p2}", "make_keylog:app"],
            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(pcap),
                                 f"port {p1} or port {p2}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(p2)
            time.sleep(1.0)  # tcpdump is capturing
            # HTTP/1.1: Mixpanel's form body, then an Amplitude JSON body sent gzip-compressed
            curl(keys, p1, "api.mixpanel.com", "--http1.1", f"https://api.mixpanel.com:{p1}/track",
                 "--data-urlencode", f"data={MIXPANEL}")
            curl(keys, p1, "api2.amplitude.com", "--http1.1", f"https://api2.amplitude.com:{p1}/2/httpapi",
                 "-H", "Content-Type: application/json", "-H", "Content-Encoding: gzip", "--data-binary", "@-",
                 data=AMPLITUDE_GZ)
            # HTTP/2: a Meta Pixel GET, a GA4 POST, a Segment call (a BAA covers Segment in the test policy)
            curl(keys, p2, "www.facebook.com", "--http2",
                 f"https://www.facebook.com:{p2}/tr/?id=4455&ev=Lead&cd[condition]=opioid%20use%20disorder"
                 "&cd[content_name]=methadone%20clinic%20intake")
            curl(keys, p2, "region1.google-analytics.com", "--http2",
                 f"https://region1.google-analytics.com:{p2}/g/collect?v=2&tid=G-KEYLOG&cid=77.88",
                 "--data-binary", "en=search&ep.search_term=hepatitis%20c%20treatment")
            curl(keys, p2, "api.segment.io", "--http2", f"https://api.segment.io:{p2}/v1/track",
                 "-H", "Content-Type: application/json",
                 "--data", '{"event":"Refill","userId":"p-3131","properties":{"medication":"sertraline"}}')
            try:
                asyncio.run(h3_post(p2, keys, "api.amplitude.com", "/2/httpapi", json.dumps({
                    "api_key": "k", "events": [{"event_type": "screening_booked", "user_id": "patient-3131",
                                                "event_properties": {"screening": "colonoscopy",
                                                                     "condition": "crohn's disease"}}]}).encode(),
                    [(b"content-type", b"application/json")]))
            except ImportError:
                print("aioquic not installed: no HTTP/3 request recorded", file=sys.stderr)
            chromium_h3(p2, cert, keys)
            time.sleep(1.0)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
            hypercorn.terminate()
            hypercorn.wait(timeout=10)
            h1.shutdown()
    print("wrote", pcap, keys)


if __name__ == "__main__":
    main()
