"""Records the HAR fixtures of tests/test_deep_har.py with real tools.

- chromium.har: headless Chromium (Debian's, driven by Playwright's `record_har_path`) loads a
  patient-portal page served over HTTPS on 127.0.0.1 (a throwaway self-signed certificate;
  the browser context ignores certificate errors). The page fires tracker calls the way the vendors'
  browser SDKs send them (Mixpanel form-encoded base64 JSON, the Meta Pixel image GET, a GA4
  sendBeacon, an Amplitude JSON POST, a Segment call, and a gzip-compressed body). Chromium's
  `--host-resolver-rules` maps every host name to 127.0.0.1, so the requests really went to the
  vendors' host names (HTTPS on the local port); no rewriting is done.
- mitmproxy.har: `mitmdump --set hardump=...` in upstream mode in front of the same server;
  curl sends tracker calls through it with absolute URLs naming the vendors' hosts, one of them
  gzip-compressed (mitmproxy's HAR then holds the decompressed text while the header still says
  gzip).

Health values are made up. Run: python3 tests/data/deep/make_har.py [output dir]
Needs: chromium, playwright (pip), mitmproxy (pip; `MITMDUMP` names its mitmdump), curl.
"""
from __future__ import annotations

import gzip
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORTAL = "mychart.example-clinic.org"

PAGE = """<!doctype html><html><head><title>Appointments</title></head><body>
<h1>Your appointment</h1><p id="done">loading</p>
<script>
const P = location.port;
const base = host => `https://${host}:${P}`;
async function run() {
  // Mixpanel browser SDK: data=<base64 JSON>, form encoded
  const mp = {event: "Appointment Booked", properties: {token: "f00dface", distinct_id: "patient-8841",
    "$current_url": location.href, condition: "type 2 diabetes", medication: "metformin 500 mg",
    email: "jane.doe@example.com"}};
  await fetch(base("api-js.mixpanel.com") + "/track/?ip=1", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "application/x-www-form-urlencoded"},
    body: "data=" + encodeURIComponent(btoa(JSON.stringify(mp)))});
  // Meta Pixel: an image GET with custom data
  await new Promise(done => { const img = new Image(); img.onload = img.onerror = done;
    img.src = base("www.facebook.com") + "/tr/?id=1234567890&ev=ViewContent&dl=" +
      encodeURIComponent(location.href) + "&cd[content_name]=HIV%20test%20results&cd[content_category]=lab-results"; });
  // GA4: sendBeacon with the events in the body
  navigator.sendBeacon(base("region1.google-analytics.com") + "/g/collect?v=2&tid=G-TEST1234&cid=555.666&dl=" +
    encodeURIComponent(location.href),
    "en=search&ep.search_term=oxycodone%20refill\\nen=view_item&ep.item_name=prenatal%20visit");
  // Amplitude HTTP API v2: JSON
  await fetch(base("api2.amplitude.com") + "/2/httpapi", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({api_key: "abc123", events: [{event_type: "lab_result_viewed", user_id: "patient-8841",
      event_properties: {test: "HbA1c", diagnosis: "type 2 diabetes", result: "8.1%"}}]})});
  // Segment (a BAA covers it in the test configuration)
  await fetch(base("api.segment.io") + "/v1/t", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({event: "Prescription Refilled", userId: "patient-8841",
      properties: {medication: "sertraline 50 mg"}})});
  // A gzip-compressed body (as some SDKs send): binary in the HAR
  const gz = await new Response(new Blob([JSON.stringify({events: [{event_type: "symptom_logged",
    event_properties: {symptom: "chest pain", condition: "atrial fibrillation"}}]})]).stream()
    .pipeThrough(new CompressionStream("gzip"))).arrayBuffer();
  await fetch(base("api2.amplitude.com") + "/batch", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain", "Content-Encoding": "gzip"}, body: gz});
  // the portal's own API call
  await fetch("/api/appointments", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({slot: "2026-12-08T09:30", reason: "follow-up"})});
  document.getElementById("done").textContent = "done";
}
run();
</script></body></html>"""


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/appointments") or self.path.startswith(f"http://{PORTAL}"):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        elif self.path.startswith("/tr") or "/tr/" in self.path:
            body = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
            self.send_response(200)
            self.send_header("Content-Type", "image/gif")
        else:
            body = b""
            self.send_response(204)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_chromium(port: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--no-sandbox", "--host-resolver-rules=MAP * 127.0.0.1"],
        )
        context = browser.new_context(record_har_path=str(out), record_har_content="embed", ignore_https_errors=True)
        page = context.new_page()
        page.goto(f"https://{PORTAL}:{port}/appointments?visit=diabetes-follow-up")
        page.wait_for_function("document.getElementById('done').textContent === 'done'", timeout=20000)
        page.wait_for_timeout(500)  # the beacon
        context.close()
        browser.close()


def record_mitmproxy(port: int, out: Path) -> None:
    mitmdump = os.environ.get("MITMDUMP") or shutil.which("mitmdump") or "mitmdump"
    proxy_port = free_port()
    proxy = subprocess.Popen(
        [mitmdump, "-q", "--listen-host", "127.0.0.1", "--listen-port", str(proxy_port),
         "--mode", f"upstream:http://127.0.0.1:{port}", "--set", f"hardump={out}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", proxy_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        curl = ["curl", "-sg", "-o", "/dev/null", "-x", proxy_url]
        subprocess.run([*curl, "http://api.mixpanel.com/engage", "--data-urlencode",
                        'data={"$distinct_id":"patient-2207","$set":{"$email":"john.roe@example.com",'
                        '"condition":"major depressive disorder","medication":"bupropion"}}'], check=True)
        subprocess.run([*curl, "http://www.facebook.com/tr/?id=99887766&ev=Schedule"
                        "&cd[appointment_type]=oncology%20consult&cd[diagnosis]=breast%20cancer"], check=True)
        gz = gzip.compress(b'{"api_key":"k","events":[{"event_type":"med_taken","user_id":"patient-2207",'
                           b'"event_properties":{"medication":"lithium carbonate","condition":"bipolar disorder"}}]}')
        subprocess.run([*curl, "http://api2.amplitude.com/2/httpapi", "-H", "Content-Type: application/json",
                        "-H", "Content-Encoding: gzip", "--data-binary", "@-"], input=gz, check=True)
        subprocess.run([*curl, "http://api.segment.io/v1/track", "-H", "Content-Type: application/json",
                        "--data", '{"event":"Refill","userId":"p-2207","properties":{"medication":"bupropion"}}'],
                       check=True)
    finally:
        proxy.terminate()  # mitmdump writes the HAR when it shuts down
        proxy.wait(timeout=30)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for the local HTTPS server."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def serve(tls: tuple[Path, Path] | None = None) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    with tempfile.TemporaryDirectory() as tmp:
        https_server = serve(self_signed(Path(tmp)))
        http_server = serve()
        try:
            record_chromium(https_server.server_address[1], out_dir / "chromium.har")
            record_mitmproxy(http_server.server_address[1], out_dir / "mitmproxy.har")
        finally:
            https_server.shutdown()
            http_server.shutdown()
    print("wrote", out_dir / "chromium.har", out_dir / "mitmproxy.har")


if __name__ == "__main__":
    main()
