"""`phi-sensor setup`: install index templates, the lifecycle policy, the Kibana saved objects and
the Elastic Security detection rule.

Every step is an idempotent HTTP request built from the files bundled in `sensor/data/elasticsearch`
and `sensor/data/kibana`; `--dry-run` prints them instead of sending them. Elasticsearch is spoken
to through the same client and version negotiation as the sink (sensor.output.elasticsearch);
OpenSearch and Kibana through plain HTTP.

Names: with data streams (the default for Elasticsearch) everything is named after the namespace
(`phi_sensor-<namespace>-*` templates and objects for the streams `logs-phi_sensor.<dataset>-<namespace>`);
with classic indices after the index prefix (`<prefix>-*` for `<prefix>-alerts-*`). Two installs with
different namespaces or prefixes live side by side in one cluster and one Kibana space.
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
from sensor.errors import EXIT_OK, EXIT_SINK, EXIT_USAGE, ConfigError
from sensor.output.ecs import ALERT_DATASET, DEFAULT_NAMESPACE, EVENT_DATASETS, STATS_DATASET
from sensor.output.specs import read_secret
from sensor.paths import KIBANA_DIR, SECURITY_RULES_DIR, TEMPLATES_DIR

DEFAULT_PREFIX = "phi-sensor"
# The prefix of the saved-object ids and rule ids as written in the bundled Kibana objects; replaced by the install name.
SHIPPED_ID_PREFIX = "phi-sensor"
_PREFIX = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_NAMESPACE = re.compile(r"[a-z0-9_.]{1,100}")
TEMPLATE_PRIORITY = 200  # above Elasticsearch's built-in `logs` template (100)


@dataclass(frozen=True)
class Layout:
    """Where documents go and what the installed objects are called (one home for the names)."""

    data_stream: bool
    namespace: str = DEFAULT_NAMESPACE
    prefix: str = DEFAULT_PREFIX

    @property
    def install(self) -> str:
        """The name every installed object starts with."""
        return f"phi_sensor-{self.namespace}" if self.data_stream else self.prefix

    def stream(self, dataset: str) -> str:
        return f"logs-{dataset}-{self.namespace}"

    def pattern(self, kind: str) -> str:
        """The index pattern of `alerts` or `events` (the data views' titles)."""
        if not self.data_stream:
            return f"{self.prefix}-{kind}-*"
        if kind == "alerts":
            return self.stream(ALERT_DATASET)
        return ",".join(self.stream(dataset) for dataset in EVENT_DATASETS.values())

    def templates(self, kinds: list[str]) -> list[tuple[str, str, list[str], str | None]]:
        """(template name, kind, index patterns, dataset or None) for each index template."""
        if not self.data_stream:
            return [(f"{self.prefix}-{kind}", kind, [f"{self.prefix}-{kind}-*"], None) for kind in kinds]
        datasets = {"alerts": [ALERT_DATASET], "events": [*EVENT_DATASETS.values(), STATS_DATASET]}
        return [
            (f"{self.install}-{dataset.rpartition('.')[2]}", kind, [self.stream(dataset)], dataset)
            for kind in kinds
            for dataset in datasets[kind]
        ]

    def object_id(self, shipped: str) -> str:
        """A saved object's or rule's id for this install, from its id in the bundled objects."""
        return self.install + shipped.removeprefix(SHIPPED_ID_PREFIX)


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
    kind: Literal["json", "lifecycle", "ism", "kibana-import", "security-rule"] = "json"
    upload: bytes = b""
    lifecycle_setting: bool = False  # body carries index.lifecycle.name (dropped if ILM is unavailable)
    objects: list[tuple[str, str, str]] = field(default_factory=list)  # (type, id, title) of an import

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


def _ism_policy(days: int, patterns: list[str], *, rollover: bool) -> dict[str, Any]:
    policy = _load_json(TEMPLATES_DIR / "ism-policy.json")
    body = policy["policy"]
    hot = next(state for state in body["states"] if state["name"] == "hot")
    hot["transitions"][0]["conditions"]["min_index_age"] = f"{days}d"
    if rollover:
        hot["actions"].append({"rollover": {"min_index_age": "30d", "min_size": "50gb"}})
    body["ism_template"][0]["index_patterns"] = patterns
    return policy


def _index_template(
    layout: Layout, kind: str, patterns: list[str], dataset: str | None, *, lifecycle: bool
) -> dict[str, Any]:
    template = _load_json(TEMPLATES_DIR / f"index-template-{kind}.json")
    template["index_patterns"] = patterns
    template["composed_of"] = [f"{layout.install}-ecs"]
    template["priority"] = TEMPLATE_PRIORITY
    settings = template["template"]["settings"]["index"]
    if lifecycle:
        settings["lifecycle"] = {"name": f"{layout.install}-{kind}"}
    else:
        settings.pop("lifecycle", None)
    if dataset is not None:
        # one data stream per template: data_stream.* are constants (ECS constant_keyword)
        template["data_stream"] = {}
        values = {"type": "logs", "dataset": dataset, "namespace": layout.namespace}
        stream_fields: dict[str, dict[str, str | int]] = {
            name: {"type": "constant_keyword", "value": value} for name, value in values.items()
        }
    else:
        # a classic index holds several datasets (and any namespace): plain keywords
        stream_fields = {name: {"type": "keyword", "ignore_above": 1024} for name in ("type", "dataset", "namespace")}
    template["template"]["mappings"] = {"properties": {"data_stream": {"properties": stream_fields}}}
    return template


def kibana_objects(layout: Layout) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The saved objects, their ids made this install's and the data views pointed at its indices."""
    objects: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    for path in sorted(KIBANA_DIR.glob("*.ndjson")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise ConfigError(str(path), f"line {number}", "not a JSON object") from None
            if not isinstance(obj, dict) or "id" not in obj or "type" not in obj:
                raise ConfigError(str(path), f"line {number}", "expected a saved object with type and id")
            obj["id"] = layout.object_id(obj["id"])
            for reference in obj.get("references", []):
                reference["id"] = layout.object_id(reference["id"])
            if obj["type"] == "index-pattern":
                kind = "events" if obj["id"].endswith("-events") else "alerts"
                obj["attributes"]["title"] = layout.pattern(kind)
            kinds[obj["type"]] += 1
            objects.append(obj)
    if not objects:
        raise ConfigError(str(KIBANA_DIR), "", "no saved objects (*.ndjson) found")
    return objects, kinds


def security_rules(layout: Layout) -> list[dict[str, Any]]:
    """The Elastic Security detection rules, reading this install's alerts."""
    rules = []
    for path in sorted(SECURITY_RULES_DIR.glob("*.json")):
        rule = _load_json(path)
        rule["rule_id"] = layout.object_id(rule["rule_id"])
        rule["index"] = layout.pattern("alerts").split(",")
        rules.append(rule)
    if not rules:
        raise ConfigError(str(SECURITY_RULES_DIR), "", "no detection rules (*.json) found")
    return rules


def layout_of(args: argparse.Namespace) -> Layout:
    data_stream = args.data_stream if args.data_stream is not None else not args.opensearch
    return Layout(data_stream, args.namespace, args.index_prefix)


def build_plan(args: argparse.Namespace) -> Plan:
    layout = layout_of(args)
    kinds = ["alerts", "events"] if args.events else ["alerts"]
    retention = {"alerts": args.retention_days, "events": args.events_retention_days}
    cluster_url = args.elasticsearch or args.opensearch
    plan = Plan(lifecycle_api="ILM" if args.elasticsearch else "ISM")
    if cluster_url:
        target = "elasticsearch" if args.elasticsearch else "opensearch"
        for kind in kinds:
            days, name = retention[kind], f"{layout.install}-{kind}"
            if days <= 0:
                continue
            if args.elasticsearch:
                plan.steps.append(Step(
                    target, "PUT", cluster_url, f"/_ilm/policy/{name}",
                    summary=f"ILM policy {name}: delete {days} days after creation",
                    body=_ilm_policy(days, rollover=layout.data_stream),
                    kind="lifecycle",
                ))
            else:
                patterns = [pattern for _, k, found, _ in layout.templates([kind]) for pattern in found]
                plan.steps.append(Step(
                    target, "PUT", cluster_url, f"/_plugins/_ism/policies/{name}",
                    summary=f"ISM policy {name}: delete {days} days after creation, for new {', '.join(patterns)}",
                    body=_ism_policy(days, patterns, rollover=layout.data_stream),
                    kind="ism",
                ))
        component = _load_json(TEMPLATES_DIR / "component-template-ecs.json")
        field_count = _count_fields(component["template"]["mappings"])
        plan.steps.append(Step(
            target, "PUT", cluster_url, f"/_component_template/{layout.install}-ecs",
            summary=f"component template {layout.install}-ecs: ECS mappings, {field_count} fields",
            body=component,
        ))
        for name, kind, patterns, dataset in layout.templates(kinds):
            lifecycle = bool(args.elasticsearch) and retention[kind] > 0
            details = ", data stream" if dataset else ""
            details += f", lifecycle {layout.install}-{kind}" if lifecycle else ""
            plan.steps.append(Step(
                target, "PUT", cluster_url, f"/_index_template/{name}",
                summary=f"index template {name} for {', '.join(patterns)}{details}",
                body=_index_template(layout, kind, patterns, dataset, lifecycle=lifecycle),
                lifecycle_setting=lifecycle,
            ))
    if args.kibana:
        objects, counts = kibana_objects(layout)
        listing = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        upload = ("\n".join(json.dumps(obj, separators=(",", ":")) for obj in objects) + "\n").encode()
        plan.steps.append(Step(
            "kibana", "POST", args.kibana, "/api/saved_objects/_import?overwrite=true",
            summary=f"saved objects: {listing}; overwrite",
            kind="kibana-import",
            upload=upload,
            objects=[(obj["type"], obj["id"], obj["attributes"].get("title", "")) for obj in objects],
        ))
    if args.security_rules:
        for rule in security_rules(layout):
            plan.steps.append(Step(
                "kibana", "POST", args.kibana, "/api/detection_engine/rules",
                summary=f"detection rule {rule['rule_id']}: {rule['name']}",
                body=rule,
                kind="security-rule",
            ))
    return plan


def _secret(env: str | None, file: str | None, option: str) -> str:
    return read_secret("command line", option, env, Path(file) if file else None).get_secret_value()


def _credentials(args: argparse.Namespace) -> tuple[str | None, tuple[str, str] | None]:
    """The encoded API key, or the user and password, the command line names."""
    if args.api_key_env or args.api_key_file:
        option = "--api-key-env" if args.api_key_env else "--api-key-file"
        key = _secret(args.api_key_env, args.api_key_file, option)
        if ":" in key:
            key = base64.b64encode(key.encode()).decode()
        return key, None
    if args.username:
        if bool(args.password_env) == bool(args.password_file):
            raise ConfigError("command line", "--username", "needs exactly one of --password-env, --password-file")
        option = "--password-env" if args.password_env else "--password-file"
        return None, (args.username, _secret(args.password_env, args.password_file, option))
    if args.password_env or args.password_file:
        raise ConfigError("command line", "--password-env", "needs --username")
    return None, None


def _session(args: argparse.Namespace, api_key: str | None, basic: tuple[str, str] | None) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"phi-egress-sensor/{__version__}"
    session.verify = args.ca_file if args.ca_file else not args.insecure
    if api_key:
        session.headers["Authorization"] = f"ApiKey {api_key}"
    elif basic:
        session.auth = basic
    return session


def _es_client(args: argparse.Namespace, api_key: str | None, basic: tuple[str, str] | None) -> Any:
    from sensor.output.elasticsearch import elasticsearch_client

    return elasticsearch_client(
        args.elasticsearch,
        api_key=api_key,
        basic_auth=basic,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        verify=not args.insecure,
        timeout=args.timeout,
    )


@dataclass
class _Answer:
    """An Elasticsearch client answer in the shape the runner reads (a requests.Response's)."""

    status_code: int
    body: Any

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)

    def json(self) -> Any:
        if isinstance(self.body, (dict, list)):
            return self.body
        return json.loads(self.body)


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


def _connection_problem(exc: Exception) -> str:
    text = f"{exc} {getattr(exc, 'message', '')} {exc.__cause__ or ''}"
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
        es_client: Any = None,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.lifecycle_api = lifecycle_api
        self.out = out
        self.err = err
        self.es_client = es_client
        self.es_known = False
        self.lifecycle_missing = False

    def request(self, step: Step, method: str, url: str, **kwargs: Any) -> Any:
        if step.target == "elasticsearch" and self.es_client is not None:
            return self._es_request(step, method, urlsplit(url).path, kwargs.get("json"), kwargs.get("params"))
        try:
            return self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.exceptions.SSLError:
            raise self._unreachable(step, "TLS handshake failed (certificate not trusted? see --ca-file)") from None
        except requests.Timeout:
            raise self._unreachable(step, "timed out") from None
        except requests.RequestException as exc:
            raise self._unreachable(step, _connection_problem(exc)) from None

    def _unreachable(self, step: Step, problem: str) -> SetupFailed:
        return SetupFailed(f"cannot reach {step.target} at {_public_url(step.base_url)}: {problem}")

    def _es_request(self, step: Step, method: str, path: str, body: Any, params: Any) -> _Answer:
        """Through the official client, with the compatibility version the server's `GET /` settles."""
        from elastic_transport import ConnectionTimeout, TlsError, TransportError
        from elasticsearch import ApiError

        from sensor.output.elasticsearch import ServerRefused, negotiate

        try:
            if not self.es_known:
                server = negotiate(self.es_client)
                self.es_known = True
                major = self.es_client.phi_compat.major
                self.out(f"ok  {server} at {_public_url(step.base_url)} (REST compatibility {major})")
            headers = {"accept": "application/json"}
            if body is not None:
                headers["content-type"] = "application/json"
            answer = self.es_client.perform_request(method, path, params=params or None, headers=headers, body=body)
            return _Answer(answer.meta.status, answer.body)
        except ServerRefused as exc:
            raise SetupFailed(f"elasticsearch at {_public_url(step.base_url)} {exc}") from None
        except ApiError as exc:
            return _Answer(exc.meta.status, exc.body)
        except TlsError:
            raise self._unreachable(step, "TLS handshake failed (certificate not trusted? see --ca-file)") from None
        except ConnectionTimeout:
            raise self._unreachable(step, "timed out") from None
        except TransportError as exc:
            raise self._unreachable(step, _connection_problem(exc)) from None

    def refused(self, step: Step, response: Any) -> SetupFailed:
        return SetupFailed(f"{step.target} refused {step.method} {urlsplit(step.url).path}: {_error_line(response)}")

    def run(self, step: Step) -> None:
        if step.kind == "kibana-import":
            self._import(step)
            return
        if step.kind == "security-rule":
            self._rule(step)
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

    def _kibana(self, step: Step, method: str, **kwargs: Any) -> requests.Response:
        # Kibana and OpenSearch Dashboards each ask for their own anti-CSRF header.
        return self.request(step, method, step.url, headers={"kbn-xsrf": "true", "osd-xsrf": "true"}, **kwargs)

    def _import(self, step: Step) -> None:
        response = self._kibana(step, "POST", files={"file": ("phi-sensor.ndjson", step.upload, "application/ndjson")})
        if response.status_code >= 300:
            raise self.refused(step, response)
        self._check_import(step, response)
        self.out(f"ok  {step.describe()}")
        for kind, object_id, title in step.objects:
            self.out(f"ok  kibana {kind} {object_id}: {title}")

    def _rule(self, step: Step) -> None:
        response = self._kibana(step, "POST", json=step.body)
        if response.status_code == 409:  # installed before: update it in place (same rule_id)
            response = self._kibana(step, "PUT", json=step.body)
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
        errors = [error for error in errors if isinstance(error, dict)] if isinstance(errors, list) else []
        for error in errors[1:]:
            detail = error.get("error")
            reason = detail.get("type", "unknown error") if isinstance(detail, dict) else "unknown error"
            self.err(f"kibana refused {error.get('type', '?')} {error.get('id', '?')}: {reason}")
        first = errors[0] if errors else {}
        error = first.get("error")
        reason = error.get("type", "unknown error") if isinstance(error, dict) else "unknown error"
        raise SetupFailed(
            f"kibana refused {len(errors)} saved object(s); first: {first.get('type', '?')} {first.get('id', '?')}: {reason}"
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
    parser.add_argument(
        "--data-stream", action=argparse.BooleanOptionalAction, default=None,
        help="data streams logs-phi_sensor.<dataset>-<namespace> (default for Elasticsearch) or, with "
        "--no-data-stream, classic dated indices <prefix>-alerts-* (default for OpenSearch)",
    )
    parser.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="data stream namespace (default: %(default)s)"
    )
    parser.add_argument(
        "--index-prefix", default=DEFAULT_PREFIX, help="classic index name prefix (default: %(default)s)"
    )
    parser.add_argument("--events", action="store_true", help="also install the events templates and policy")
    parser.add_argument(
        "--security-rules", action="store_true",
        help="install the Elastic Security detection rule(s) in Kibana (needs --kibana)",
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
    if not _NAMESPACE.fullmatch(args.namespace):
        raise ConfigError("command line", "--namespace", "expected lowercase letters, digits, '_', '.' (no '-')")
    if args.security_rules and not args.kibana:
        raise ConfigError("command line", "--security-rules", "needs --kibana URL")


def setup_main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        _check_args(args)
        plan = build_plan(args)
        api_key, basic = _credentials(args)
    except ConfigError as exc:
        print(f"phi-sensor setup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        for step in plan.steps:
            print(step.describe())
        print(f"dry run: {len(plan.steps)} request(s) not sent")
        return EXIT_OK
    session = _session(args, api_key, basic)
    es_client = _es_client(args, api_key, basic) if args.elasticsearch else None
    runner = _Runner(
        session, args.timeout, plan.lifecycle_api, print, lambda line: print(line, file=sys.stderr), es_client
    )
    try:
        for step in plan.steps:
            runner.run(step)
    except SetupFailed as exc:
        print(f"phi-sensor setup: {exc}", file=sys.stderr)
        return EXIT_SINK
    finally:
        session.close()
        if es_client is not None:
            es_client.close()
    return EXIT_OK
