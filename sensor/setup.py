"""`phi-sensor setup`: install index templates, the lifecycle policy and the Kibana saved objects.

Every step is an idempotent HTTP request built from the files bundled in `sensor/data/elasticsearch`
and `sensor/data/kibana`; `--dry-run` prints them instead of sending them.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import requests

from sensor import __version__
from sensor.errors import ConfigError
from sensor.output.specs import read_secret
from sensor.paths import KIBANA_DIR, TEMPLATES_DIR

DEFAULT_PREFIX = "phi-sensor"
EXIT_CONFIG = 2
EXIT_SERVER = 4
_PREFIX = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")


class SetupFailed(Exception):
    """A server could not be reached or refused a request; the message is the one line to print."""


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), "", f"cannot load: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a JSON object")
    return data


def _count_fields(mapping: dict[str, Any]) -> int:
    total = 0
    for spec in mapping.get("properties", {}).values():
        total += _count_fields(spec) if "properties" in spec else 1
    return total


def _public_url(url: str) -> str:
    """The URL without user:password, for printing."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@dataclass
class Step:
    """One request of the plan. `kind` selects how it is sent (plain, ISM update, Kibana import)."""

    target: str  # "elasticsearch" | "opensearch" | "kibana"
    method: str
    base_url: str
    path: str
    summary: str
    body: dict[str, Any] | None = None
    kind: Literal["json", "lifecycle", "ism", "kibana-import"] = "json"
    upload: bytes = b""
    lifecycle_setting: bool = False  # body carries index.lifecycle.name (dropped if ILM is unavailable)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    def describe(self) -> str:
        return f"{self.method} {_public_url(self.url)}  ({self.summary})"


@dataclass
class Plan:
    lifecycle_api: str  # "ILM" or "ISM", for messages
    steps: list[Step] = field(default_factory=list)


def _ilm_policy(days: int, *, rollover: bool) -> dict[str, Any]:
    policy = _load_json(TEMPLATES_DIR / "ilm-policy.json")
    phases = policy["policy"]["phases"]
    phases["delete"]["min_age"] = f"{days}d"
    if rollover:
        # Data streams roll over; dated indices are already one per day.
        phases["hot"]["actions"]["rollover"] = {"max_age": "30d", "max_primary_shard_size": "50gb"}
    return policy


def _ism_policy(days: int, pattern: str, *, rollover: bool) -> dict[str, Any]:
    policy = _load_json(TEMPLATES_DIR / "ism-policy.json")
    body = policy["policy"]
    hot = next(state for state in body["states"] if state["name"] == "hot")
    hot["transitions"][0]["conditions"]["min_index_age"] = f"{days}d"
    if rollover:
        hot["actions"].append({"rollover": {"min_index_age": "30d", "min_size": "50gb"}})
    body["ism_template"][0]["index_patterns"] = [pattern]
    return policy


def _index_template(kind: str, prefix: str, *, lifecycle: bool, data_stream: bool) -> dict[str, Any]:
    template = _load_json(TEMPLATES_DIR / f"index-template-{kind}.json")
    template["index_patterns"] = [f"{prefix}-{kind}-*"]
    template["composed_of"] = [f"{prefix}-ecs"]
    settings = template["template"]["settings"]["index"]
    if lifecycle:
        settings["lifecycle"] = {"name": f"{prefix}-{kind}"}
    else:
        settings.pop("lifecycle", None)
    if data_stream:
        template["data_stream"] = {}
    return template


def _kibana_objects(prefix: str) -> tuple[bytes, Counter[str]]:
    """The saved objects, with the data view pointed at the chosen index prefix."""
    lines: list[str] = []
    kinds: Counter[str] = Counter()
    for path in sorted(KIBANA_DIR.glob("*.ndjson")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise ConfigError(str(path), f"line {number}", "not a JSON object") from None
            if obj.get("type") == "index-pattern":
                obj["attributes"]["title"] = f"{prefix}-alerts-*"
            kinds[obj.get("type", "?")] += 1
            lines.append(json.dumps(obj, separators=(",", ":")))
    if not lines:
        raise ConfigError(str(KIBANA_DIR), "", "no saved objects (*.ndjson) found")
    return ("\n".join(lines) + "\n").encode(), kinds


def build_plan(args: argparse.Namespace) -> Plan:
    prefix = args.index_prefix
    kinds = ["alerts", "events"] if args.events else ["alerts"]
    retention = {"alerts": args.retention_days, "events": args.events_retention_days}
    cluster_url = args.elasticsearch or args.opensearch
    plan = Plan(lifecycle_api="ILM" if args.elasticsearch else "ISM")
    if cluster_url:
        target = "elasticsearch" if args.elasticsearch else "opensearch"
        for kind in kinds:
            days, name = retention[kind], f"{prefix}-{kind}"
            if days <= 0:
                continue
            if args.elasticsearch:
                plan.steps.append(Step(
                    target, "PUT", cluster_url, f"/_ilm/policy/{name}",
                    summary=f"ILM policy {name}: delete {days} days after creation",
                    body=_ilm_policy(days, rollover=args.data_stream),
                    kind="lifecycle",
                ))
            else:
                plan.steps.append(Step(
                    target, "PUT", cluster_url, f"/_plugins/_ism/policies/{name}",
                    summary=f"ISM policy {name}: delete {days} days after creation, for new {name}-* indices",
                    body=_ism_policy(days, f"{name}-*", rollover=args.data_stream),
                    kind="ism",
                ))
        component = _load_json(TEMPLATES_DIR / "component-template-ecs.json")
        field_count = _count_fields(component["template"]["mappings"])
        plan.steps.append(Step(
            target, "PUT", cluster_url, f"/_component_template/{prefix}-ecs",
            summary=f"component template {prefix}-ecs: ECS mappings, {field_count} fields",
            body=component,
        ))
        for kind in kinds:
            lifecycle = bool(args.elasticsearch) and retention[kind] > 0
            details = ", data stream" if args.data_stream else ""
            details += f", lifecycle {prefix}-{kind}" if lifecycle else ""
            plan.steps.append(Step(
                target, "PUT", cluster_url, f"/_index_template/{prefix}-{kind}",
                summary=f"index template for {prefix}-{kind}-*{details}",
                body=_index_template(kind, prefix, lifecycle=lifecycle, data_stream=args.data_stream),
                lifecycle_setting=lifecycle,
            ))
    if args.kibana:
        upload, counts = _kibana_objects(prefix)
        listing = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        plan.steps.append(Step(
            "kibana", "POST", args.kibana, "/api/saved_objects/_import?overwrite=true",
            summary=f"saved objects: {listing}; overwrite",
            kind="kibana-import",
            upload=upload,
        ))
    return plan


def _secret(env: str | None, file: str | None, option: str) -> str:
    return read_secret("command line", option, env, Path(file) if file else None).get_secret_value()


def _session(args: argparse.Namespace) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"phi-egress-sensor/{__version__}"
    session.verify = args.ca_file if args.ca_file else not args.insecure
    if args.api_key_env or args.api_key_file:
        option = "--api-key-env" if args.api_key_env else "--api-key-file"
        key = _secret(args.api_key_env, args.api_key_file, option)
        if ":" in key:
            key = base64.b64encode(key.encode()).decode()
        session.headers["Authorization"] = f"ApiKey {key}"
    elif args.username:
        if bool(args.password_env) == bool(args.password_file):
            raise ConfigError("command line", "--username", "needs exactly one of --password-env, --password-file")
        option = "--password-env" if args.password_env else "--password-file"
        session.auth = (args.username, _secret(args.password_env, args.password_file, option))
    elif args.password_env or args.password_file:
        raise ConfigError("command line", "--password-env", "needs --username")
    return session


def _error_line(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        detail = f"{error.get('type', '')}: {error.get('reason', '')}".strip(": ")
    elif isinstance(error, str):
        detail = error
    else:
        detail = response.text.strip().replace("\n", " ")
    return f"HTTP {response.status_code} {detail[:300]}".rstrip()


def _connection_problem(exc: requests.RequestException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo failed" in text or "nodename nor servname" in text:
        return "host name not found"
    return "connection failed"


def _api_missing(response: requests.Response) -> bool:
    # How a cluster without the ILM/ISM API (plugin absent, or a compatible server) answers.
    return response.status_code in (400, 404, 405) and "no handler found" in response.text


class _Runner:
    """Sends the steps in order; notices a cluster without lifecycle API and carries on without it."""

    def __init__(
        self,
        session: requests.Session,
        timeout: float,
        lifecycle_api: str,
        out: Callable[[str], None],
        err: Callable[[str], None],
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.lifecycle_api = lifecycle_api
        self.out = out
        self.err = err
        self.lifecycle_missing = False

    def request(self, step: Step, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.exceptions.SSLError:
            raise SetupFailed(
                f"cannot reach {step.target} at {_public_url(step.base_url)}: TLS handshake failed "
                "(certificate not trusted? see --ca-file)"
            ) from None
        except requests.Timeout:
            raise SetupFailed(f"cannot reach {step.target} at {_public_url(step.base_url)}: timed out") from None
        except requests.RequestException as exc:
            problem = _connection_problem(exc)
            raise SetupFailed(f"cannot reach {step.target} at {_public_url(step.base_url)}: {problem}") from None

    def refused(self, step: Step, response: requests.Response) -> SetupFailed:
        return SetupFailed(f"{step.target} refused {step.method} {urlsplit(step.url).path}: {_error_line(response)}")

    def run(self, step: Step) -> None:
        if step.kind == "kibana-import":
            response = self.request(
                step,
                "POST",
                step.url,
                # Kibana and OpenSearch Dashboards each ask for their own anti-CSRF header.
                headers={"kbn-xsrf": "true", "osd-xsrf": "true"},
                files={"file": ("phi-sensor.ndjson", step.upload, "application/ndjson")},
            )
            if response.status_code >= 300:
                raise self.refused(step, response)
            self._check_import(step, response)
            self.out(f"ok  {step.describe()}")
            return
        if self.lifecycle_missing and step.kind in ("lifecycle", "ism"):
            return
        body = step.body
        if step.lifecycle_setting and self.lifecycle_missing:
            body = copy.deepcopy(body)
            assert body is not None
            body["template"]["settings"]["index"].pop("lifecycle", None)
        params: dict[str, Any] = {}
        if step.kind == "ism":
            # ISM refuses a plain PUT over an existing policy: update it at its current version.
            current = self.request(step, "GET", step.url)
            if _api_missing(current):
                self._no_lifecycle()
                return
            if current.status_code == 200:
                info = current.json()
                params = {"if_seq_no": info.get("_seq_no"), "if_primary_term": info.get("_primary_term")}
            elif current.status_code != 404:
                raise self.refused(step, current)
        response = self.request(step, step.method, step.url, json=body, params=params)
        if step.kind in ("lifecycle", "ism") and _api_missing(response):
            self._no_lifecycle()
            return
        if response.status_code >= 300:
            raise self.refused(step, response)
        self.out(f"ok  {step.describe()}")

    def _no_lifecycle(self) -> None:
        self.lifecycle_missing = True
        self.err(
            f"warning: the cluster has no {self.lifecycle_api} API: no retention policy installed; "
            "indices are kept until deleted by hand"
        )

    def _check_import(self, step: Step, response: requests.Response) -> None:
        try:
            result = response.json()
        except ValueError:
            raise SetupFailed(
                f"kibana answered the import with something that is not JSON (HTTP {response.status_code})"
            ) from None
        if isinstance(result, dict) and result.get("success") is True:
            return
        errors = result.get("errors") if isinstance(result, dict) else None
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        error = first.get("error")
        reason = error.get("type", "unknown error") if isinstance(error, dict) else "unknown error"
        count = len(errors) if isinstance(errors, list) else 0
        raise SetupFailed(
            f"kibana refused {count} saved object(s); first: {first.get('type', '?')} {first.get('id', '?')}: {reason}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phi-sensor setup",
        description="Install the index templates, the retention policy and the Kibana saved objects.",
    )
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--elasticsearch", metavar="URL", help="Elasticsearch URL (templates + ILM policy)")
    cluster.add_argument("--opensearch", metavar="URL", help="OpenSearch URL (templates + ISM policy)")
    parser.add_argument("--kibana", metavar="URL", help="Kibana or OpenSearch Dashboards URL (saved objects)")
    auth = parser.add_argument_group("credentials (used for every URL above)")
    auth.add_argument("--api-key-env", metavar="VAR", help="environment variable holding an API key")
    auth.add_argument("--api-key-file", metavar="FILE", help="file holding an API key")
    auth.add_argument("--username", help="user for basic authentication")
    auth.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    auth.add_argument("--password-file", metavar="FILE", help="file holding the password")
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificate(s) to verify the servers with")
    parser.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    parser.add_argument("--index-prefix", default=DEFAULT_PREFIX, help="index name prefix (default: %(default)s)")
    parser.add_argument("--events", action="store_true", help="also install the events template and policy")
    parser.add_argument(
        "--data-stream", action="store_true", help="templates for data streams instead of dated indices"
    )
    parser.add_argument(
        "--retention-days", type=int, default=400,
        help="delete alert indices this many days after creation; 0 keeps them (default: %(default)s)",
    )
    parser.add_argument(
        "--events-retention-days", type=int, default=30, help="the same for event indices (default: %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print every request and send nothing")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not (args.elasticsearch or args.opensearch or args.kibana):
        raise ConfigError(
            "command line", "", "nothing to do: give --elasticsearch URL, --opensearch URL and/or --kibana URL"
        )
    for option in ("elasticsearch", "opensearch", "kibana"):
        url = getattr(args, option)
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError("command line", f"--{option}", "expected an http:// or https:// URL")
    if args.ca_file and not Path(args.ca_file).is_file():
        raise ConfigError("command line", "--ca-file", f"file not found: {args.ca_file}")
    if not _PREFIX.fullmatch(args.index_prefix):
        raise ConfigError("command line", "--index-prefix", "expected lowercase letters, digits, '_', '.', '-'")


def setup_main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        _check_args(args)
        plan = build_plan(args)
        session = _session(args)
    except ConfigError as exc:
        print(f"phi-sensor setup: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        session.close()
        for step in plan.steps:
            print(step.describe())
        print(f"dry run: {len(plan.steps)} request(s) not sent")
        return 0
    runner = _Runner(session, args.timeout, plan.lifecycle_api, print, lambda line: print(line, file=sys.stderr))
    try:
        for step in plan.steps:
            runner.run(step)
    except SetupFailed as exc:
        print(f"phi-sensor setup: {exc}", file=sys.stderr)
        return EXIT_SERVER
    finally:
        session.close()
    return 0
