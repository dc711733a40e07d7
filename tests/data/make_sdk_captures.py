"""Capture what the vendors' own SDKs send, for the decoder tests.

The official Python (posthog, mixpanel, segment-analytics-python, amplitude-analytics) and Node
(posthog-node, mixpanel, @segment/analytics-node, @amplitude/analytics-node) clients run
unmodified and send one event each, carrying planted health data (a condition, a medication, a
glucose reading and an ICD-10-CM code), over plaintext HTTP to a recording server on
127.0.0.1:80. tcpdump captures the loopback traffic.

How the traffic reaches loopback without changing what the SDKs send: each SDK is configured
with the vendor's real host name and an ``http://`` URL, and only name resolution is redirected,
by a shim loaded before the SDK (Python: a ``sitecustomize`` wrapping ``socket.getaddrinfo``;
Node: ``--require`` of a file wrapping ``dns.lookup``), which answers 127.0.0.1 for the vendor
hosts. So the Host header, path, query, headers and body are byte for byte what the SDK would
send the vendor over plaintext HTTP; only the addresses are loopback.

The browser SDKs (posthog-js, mixpanel-browser, @segment/analytics-next, @amplitude/analytics-browser:
their published browser bundles) run in jsdom, a DOM for Node, on the page
http://app.example-clinic.org/conditions/diabetes, each in a fresh page, and send what they choose
(``sdk-browser.pcap``); the recording server answers CORS preflights and Segment's settings request
as the vendors do. The older body encodings PostHog still accepts are sent by curl with bodies built
the way posthog-js built them: ``compression=gzip-js`` (gzip), ``compression=lz64`` (lz-string's
``compressToBase64``, from the npm ``lz-string`` package) and ``compression=base64``
(``posthog-browser-shapes.pcap``).

Needs root (port 80 and tcpdump), Python 3, the four PyPI packages, node and npm, curl. Writes
``sdk-python.pcap``, ``sdk-node.pcap``, ``sdk-browser.pcap`` and ``posthog-browser-shapes.pcap``
next to this file:

    python3 tests/data/make_sdk_captures.py [--out DIR] [--npm-dir DIR]

The SDK versions used are printed and recorded in ``sdk-captures.json``.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = 80
HOSTS = ["us.i.posthog.com", "api.mixpanel.com", "api-js.mixpanel.com", "api.segment.io", "cdn.segment.com",
         "api2.amplitude.com"]
NPM_PACKAGES = ["posthog-node", "mixpanel", "@segment/analytics-node", "@amplitude/analytics-node", "lz-string", "jsdom",
                "posthog-js", "mixpanel-browser", "@segment/analytics-next", "@amplitude/analytics-browser"]
PIP_PACKAGES = ["posthog", "mixpanel", "segment-analytics-python", "amplitude-analytics"]

# The planted health data: every SDK sends the same facts, each with its own ICD-10-CM code.
HEALTH = {"condition": "type 2 diabetes", "medication": "metformin 500 mg", "glucose": "182 mg/dL"}
CODES = {
    ("python", "posthog"): "U07.1", ("python", "mixpanel"): "U09.9", ("python", "segment"): "M35.81",
    ("python", "amplitude"): "E11.A", ("node", "posthog"): "E11.A", ("node", "mixpanel"): "M35.81",
    ("node", "segment"): "U09.9", ("node", "amplitude"): "U07.1", ("browser", "posthog"): "E11.A",
    ("browser", "mixpanel"): "U07.1", ("browser", "segment"): "U09.9", ("browser", "amplitude"): "M35.81",
}


class _Recorder(BaseHTTPRequestHandler):
    """Answers each vendor's endpoints the way its SDK expects (status 1, Ok, success, code 200)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _answer(self) -> None:
        body = self._body()
        host = (self.headers.get("host") or "").split(":")[0]
        path = self.path.split("?")[0]
        if self.command == "OPTIONS":
            reply = b""
        elif host == "cdn.segment.com":  # analytics.js settings: send to the Segment.io destination over http
            reply = json.dumps({"integrations": {"Segment.io": {"apiKey": "seg_fixture", "apiHost": "api.segment.io/v1",
                                                                "protocol": "http"}}}).encode()
        elif host in ("api.mixpanel.com", "api-js.mixpanel.com"):
            verbose = b"verbose=1" in body or "verbose=1" in self.path
            reply = b'{"status": 1, "error": null}' if verbose else b"1"
        elif host == "api2.amplitude.com":
            reply = b'{"code": 200, "events_ingested": 1, "payload_size_bytes": 1, "server_upload_time": 1}'
        elif host == "api.segment.io":
            reply = b'{"success": true}'
        elif path.startswith(("/flags", "/decide")):
            reply = b'{"flags": {}, "featureFlags": {}, "featureFlagPayloads": {}, "errorsWhileComputingFlags": false}'
        else:
            reply = b'{"status": "Ok"}'
        self.send_response(200)
        if self.headers.get("origin"):  # the browser SDKs run on a page of another origin
            self.send_header("Access-Control-Allow-Origin", self.headers["origin"])
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", self.headers.get("access-control-request-headers", "content-type"))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_POST = do_GET = do_OPTIONS = _answer


PY_SHIM = textwrap.dedent(f"""
    import socket
    _HOSTS = {HOSTS!r}
    _real = socket.getaddrinfo
    def _loopback(host, *args, **kwargs):
        return _real("127.0.0.1" if host in _HOSTS else host, *args, **kwargs)
    socket.getaddrinfo = _loopback
""")

NODE_SHIM = textwrap.dedent(f"""
    const dns = require('dns');
    const HOSTS = {json.dumps(HOSTS)};
    const real = dns.lookup;
    dns.lookup = function (host, options, callback) {{
      if (typeof options === 'function') {{ callback = options; options = {{}}; }}
      if (!HOSTS.includes(host)) return real.call(dns, host, options, callback);
      if (options && options.all) return callback(null, [{{address: '127.0.0.1', family: 4}}]);
      return callback(null, '127.0.0.1', 4);
    }};
""")

PY_SDKS = textwrap.dedent("""
    import json, sys
    health = json.loads(sys.argv[1]); codes = json.loads(sys.argv[2])
    def props(vendor):
        return {**health, "dx": codes[vendor]}

    from posthog import Posthog
    posthog = Posthog("phc_fixture", host="http://us.i.posthog.com", sync_mode=True, disable_geoip=True)
    posthog.capture("medication_logged", distinct_id="patient-1001",
                    properties={**props("posthog"), "$current_url": "http://app.example-clinic.org/glucose"})
    posthog.flush(); posthog.shutdown()

    from mixpanel import Consumer, Mixpanel
    mixpanel = Mixpanel("mp_fixture", consumer=Consumer(events_url="http://api.mixpanel.com/track",
                                                         people_url="http://api.mixpanel.com/engage"))
    mixpanel.track("patient-1001", "medication_logged", props("mixpanel"))

    import segment.analytics as segment
    segment.write_key = "seg_fixture"; segment.host = "http://api.segment.io"; segment.gzip = True
    segment.track("patient-1001", "medication_logged", props("segment"))
    segment.flush(); segment.shutdown()

    from amplitude import Amplitude, BaseEvent, Config
    amplitude = Amplitude("amp_fixture", Config(server_url="http://api2.amplitude.com/2/httpapi"))
    amplitude.track(BaseEvent("medication_logged", user_id="patient-1001", event_properties=props("amplitude")))
    amplitude.flush(); amplitude.shutdown()
""")

NODE_SDKS = textwrap.dedent("""
    const health = JSON.parse(process.argv[2]); const codes = JSON.parse(process.argv[3]);
    const props = (vendor) => ({...health, dx: codes[vendor]});
    (async () => {
      const { PostHog } = require('posthog-node');
      const posthog = new PostHog('phc_fixture', {host: 'http://us.i.posthog.com',
        flushAt: 1, flushInterval: 0, disableGeoip: true});
      posthog.capture({distinctId: 'patient-1001', event: 'medication_logged', properties: props('posthog')});
      await posthog.shutdown();

      const Mixpanel = require('mixpanel');
      const mixpanel = Mixpanel.init('mp_fixture', {host: 'api.mixpanel.com', protocol: 'http'});
      await new Promise((done) => mixpanel.track('medication_logged', {distinct_id: 'patient-1001', ...props('mixpanel')}, done));

      const { Analytics } = require('@segment/analytics-node');
      const segment = new Analytics({writeKey: 'seg_fixture', host: 'http://api.segment.io', maxEventsInBatch: 1});
      segment.track({userId: 'patient-1001', event: 'medication_logged', properties: props('segment')});
      await segment.closeAndFlush();

      const amplitude = require('@amplitude/analytics-node');
      amplitude.init('amp_fixture', {serverUrl: 'http://api2.amplitude.com/2/httpapi', flushQueueSize: 1});
      await amplitude.track('medication_logged', props('amplitude'), {user_id: 'patient-1001'}).promise;
      await amplitude.flush().promise;
    })().catch((error) => { console.error(error); process.exit(1); });
""")

BROWSER_SDKS = textwrap.dedent("""
    const { JSDOM } = require('jsdom');
    const fs = require('fs');
    const [vendor, health, code] = [process.argv[2], JSON.parse(process.argv[3]), process.argv[4]];
    const props = {...health, dx: code};
    const page = '<!doctype html><html><head><title>Diabetes care</title></head><body></body></html>';
    const dom = new JSDOM(page, {url: 'http://app.example-clinic.org/conditions/diabetes', runScripts: 'dangerously',
                                 pretendToBeVisual: true});
    const w = dom.window;
    const load = (file) => {
      const script = w.document.createElement('script');
      script.textContent = fs.readFileSync(require.resolve(file), 'utf8');
      w.document.head.appendChild(script);
    };
    if (vendor === 'posthog') {
      load('posthog-js/dist/array.full.js');
      w.posthog.init('phc_fixture', {api_host: 'http://us.i.posthog.com', persistence: 'memory', autocapture: false,
                                     disable_session_recording: true, advanced_disable_feature_flags: true,
                                     disable_surveys: true, request_batching: false});
      w.posthog.capture('medication_logged', props);
    } else if (vendor === 'mixpanel') {
      load('mixpanel-browser/dist/mixpanel.umd.js');
      w.mixpanel.init('mp_fixture', {api_host: 'http://api-js.mixpanel.com', batch_flush_interval_ms: 500});
      w.mixpanel.track('medication_logged', props);
    } else if (vendor === 'segment') {
      w.analytics = [];  // the snippet's stub: write key, CDN and the calls made before the library loads
      w.analytics._writeKey = 'seg_fixture';
      w.analytics._cdn = 'http://cdn.segment.com';
      w.analytics.push(['page']);
      w.analytics.push(['track', 'medication_logged', props]);
      load('@segment/analytics-next/dist/umd/standalone.js');
    } else if (vendor === 'amplitude') {
      load('@amplitude/analytics-browser/lib/scripts/amplitude-min.js');
      w.amplitude.init('amp_fixture', {serverUrl: 'http://api2.amplitude.com/2/httpapi', transport: 'xhr',
                                       flushIntervalMillis: 500, autocapture: false, fetchRemoteConfig: false});
      w.amplitude.track('medication_logged', props);
    }
    setTimeout(() => process.exit(0), 4000);
""")

LZ_SCRIPT = "process.stdout.write(require('lz-string').compressToBase64(require('fs').readFileSync(0, 'utf8')))"


def _capture(path: Path, run) -> None:
    """Record loopback port 80 while `run()` talks to the recording server."""
    tcpdump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(path), f"tcp port {PORT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        run()
        time.sleep(1.0)
    finally:
        tcpdump.terminate()
        tcpdump.wait(timeout=10)
    print(f"{path.name}: {path.stat().st_size} bytes")


def _codes(runtime: str) -> str:
    return json.dumps({vendor: code for (where, vendor), code in CODES.items() if where == runtime})


def _browser_shapes(npm_dir: Path) -> None:
    """posthog-js's three body encodings, sent with curl."""
    events = [
        {"event": "$pageview", "properties": {"distinct_id": "patient-1001", "token": "phc_fixture",
         "$current_url": "http://app.example-clinic.org/conditions/diabetes", "title": "Diabetes care", **HEALTH,
         "dx": code}}
        for code in ("E11.A",)
    ]
    text = json.dumps(events)
    lz = subprocess.run(["node", "-e", LZ_SCRIPT], input=text, capture_output=True, text=True, check=True,
                        cwd=npm_dir).stdout
    gz = gzip.compress(text.replace("E11.A", "U09.9").encode(), mtime=0)
    b64 = base64.b64encode(text.replace("E11.A", "M35.81").encode()).decode()
    url = "http://us.i.posthog.com/e/?ip=0&_=1765000000000&ver=1.200.0&compression={}"
    with tempfile.NamedTemporaryFile() as body:
        body.write(gz)
        body.flush()
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--resolve", "us.i.posthog.com:80:127.0.0.1",
                        "-H", "Content-Type: text/plain", "--data-binary", f"@{body.name}", url.format("gzip-js")], check=True)
    for compression, data in (("lz64", lz), ("base64", b64)):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--resolve", "us.i.posthog.com:80:127.0.0.1",
                        "--data-urlencode", f"data={data}", url.format(compression)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--npm-dir", type=Path, default=Path(tempfile.gettempdir()) / "phi-sensor-sdk-npm")
    args = parser.parse_args()
    args.npm_dir.mkdir(parents=True, exist_ok=True)
    if not all((args.npm_dir / "node_modules" / name).is_dir() for name in NPM_PACKAGES):
        subprocess.run(["npm", "install", "--silent", "--prefix", str(args.npm_dir), *NPM_PACKAGES], check=True)
    versions = {f"pypi:{name}": metadata.version(name) for name in PIP_PACKAGES}
    for name in NPM_PACKAGES:
        manifest = json.loads((args.npm_dir / "node_modules" / name / "package.json").read_text())
        versions[f"npm:{name}"] = manifest["version"]
    versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()

    server = ThreadingHTTPServer(("127.0.0.1", PORT), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as shims:
        (Path(shims) / "sitecustomize.py").write_text(PY_SHIM)
        (Path(shims) / "loopback.js").write_text(NODE_SHIM)
        (Path(shims) / "sdks.js").write_text(NODE_SDKS)
        python_env = {**os.environ, "PYTHONPATH": shims}
        node_env = {**os.environ, "NODE_PATH": str(args.npm_dir / "node_modules")}
        _capture(args.out / "sdk-python.pcap", lambda: subprocess.run(
            [sys.executable, "-c", PY_SDKS, json.dumps(HEALTH), _codes("python")], env=python_env, check=True, timeout=120))
        _capture(args.out / "sdk-node.pcap", lambda: subprocess.run(
            ["node", "--require", str(Path(shims) / "loopback.js"), str(Path(shims) / "sdks.js"), json.dumps(HEALTH),
             _codes("node")], env=node_env, check=True, timeout=120))
        (Path(shims) / "browser.js").write_text(BROWSER_SDKS)
        _capture(args.out / "sdk-browser.pcap", lambda: [subprocess.run(
            ["node", "--require", str(Path(shims) / "loopback.js"), str(Path(shims) / "browser.js"), vendor,
             json.dumps(HEALTH), code], env=node_env, check=True, timeout=120)
            for (where, vendor), code in CODES.items() if where == "browser"])
        _capture(args.out / "posthog-browser-shapes.pcap", lambda: _browser_shapes(args.npm_dir))
    server.shutdown()
    record = {"versions": versions, "health": HEALTH, "codes": {f"{k[0]}:{k[1]}": v for k, v in CODES.items()}}
    (args.out / "sdk-captures.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(json.dumps(versions, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
