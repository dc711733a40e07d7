"""The `outputs:` entries validated (types, URLs, names, credentials) and the remote sinks built.

Only entries that need it come here: the command line's JSON-lines files and stdout are built by
`factory.build_sinks` directly, so a plain replay does not load pydantic.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from sensor.errors import ConfigError
from sensor.output.jsonl import check_writable, open_jsonl
from sensor.output.sinks import AlertsOnly, Sink
from sensor.output.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_ITEMS, Backoff, Spool, SpoolError
from sensor.severity import Severity

if TYPE_CHECKING:  # the client libraries load only when an output of theirs is configured
    from elasticsearch import Elasticsearch
    from opensearchpy import OpenSearch

log = logging.getLogger(__name__)

PAGERDUTY_ROUTING_KEY_ENV = "PHI_SENSOR_PAGERDUTY_ROUTING_KEY"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class AuthSettings(BaseModel):
    """Where credentials come from: never the configuration file itself."""

    model_config = ConfigDict(extra="forbid")

    api_key_env: str | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_method(self) -> AuthSettings:
        methods = [m for m in (self.api_key_env, self.api_key_file, self.username) if m]
        if len(methods) != 1:
            raise ValueError("expected exactly one of api_key_env, api_key_file, username (with a password)")
        password_sources = [p for p in (self.password_env, self.password_file) if p]
        if self.username and len(password_sources) != 1:
            raise ValueError("username: needs exactly one of password_env, password_file")
        if not self.username and password_sources:
            raise ValueError("username: password_env/password_file need a username")
        return self


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value


_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _OutputBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: _NAME | None = None
    min_severity: Severity | None = None


class JsonlOutput(_OutputBase):
    type: Literal["jsonl"]
    path: str = "-"
    # A local file records whatever the sensor was asked to emit.
    events: bool = True


class _RemoteOutput(_OutputBase):
    url: str
    auth: AuthSettings | None = None
    ca_file: Path | None = None
    verify: bool = True
    timeout: float = Field(10.0, gt=0, le=300)
    events: bool = False
    backoff_base: float = Field(1.0, gt=0, le=300)
    backoff_max: float = Field(60.0, gt=0, le=3600)
    spool_max_items: int = Field(DEFAULT_MAX_ITEMS, ge=1)
    spool_max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


class SearchOutput(_RemoteOutput):
    type: Literal["elasticsearch", "opensearch"]
    index_prefix: str = Field("phi-sensor", pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    # data streams logs-phi_sensor.<dataset>-<namespace>: the default for Elasticsearch; classic
    # dated indices <index_prefix>-alerts-* the default for OpenSearch
    data_stream: bool | None = None
    namespace: str = Field("default", pattern=r"^[a-z0-9_.]{1,100}$")
    batch_size: int = Field(500, ge=1, le=10_000)

    @property
    def uses_data_stream(self) -> bool:
        return self.data_stream if self.data_stream is not None else self.type == "elasticsearch"


class WebhookOutput(_RemoteOutput):
    type: Literal["webhook"]
    format: Literal["generic", "slack", "pagerduty"] = "generic"
    # A Slack webhook URL is itself a credential: keep it out of reprs.
    url: str = Field("", repr=False)
    routing_key_env: str | None = None
    routing_key_file: Path | None = None
    throttle_seconds: float = Field(0.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return value if value == "" else _check_http_url(value)

    @model_validator(mode="after")
    def _format_rules(self) -> WebhookOutput:
        if self.format == "pagerduty":
            if not self.url:
                self.url = PAGERDUTY_EVENTS_URL
            if self.routing_key_env and self.routing_key_file:
                raise ValueError("routing_key_env: expected one of routing_key_env, routing_key_file")
            if not self.routing_key_file and not self.routing_key_env:
                self.routing_key_env = PAGERDUTY_ROUTING_KEY_ENV
        elif self.routing_key_env or self.routing_key_file:
            raise ValueError("format: routing_key_env/routing_key_file apply to format pagerduty only")
        if not self.url:
            raise ValueError("url: expected an http:// or https:// URL with a host")
        if self.events and self.format != "generic":
            raise ValueError(f"events: a {self.format} webhook takes alerts only")
        return self


_Output = JsonlOutput | SearchOutput | WebhookOutput
_MODELS: dict[str, type[_Output]] = {
    "jsonl": JsonlOutput,
    "elasticsearch": SearchOutput,
    "opensearch": SearchOutput,
    "webhook": WebhookOutput,
}


def _key(index: int, loc: tuple[Any, ...] = ()) -> str:
    return f"outputs[{index}]" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _validate(raw: Any, index: int, source: str) -> _Output:
    if not isinstance(raw, dict):
        raise ConfigError(source, _key(index), "expected a mapping with a type")
    entry = dict(raw)
    kind = entry.get("type")
    if kind in ("slack", "pagerduty"):
        if entry.get("format", kind) != kind:
            raise ConfigError(source, _key(index, ("format",)), f"type {kind} implies format {kind}")
        entry["type"] = "webhook"
        entry["format"] = kind
        kind = "webhook"
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted({*_MODELS, "slack", "pagerduty"}))
        raise ConfigError(source, _key(index, ("type",)), f"expected one of {known}")
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        # Cross-field checks name their field as "field: problem"; report it under that key.
        field, sep, rest = message.partition(": ")
        if sep and field in model.model_fields:
            loc, message = (*loc, field), rest
        raise ConfigError(source, _key(index, loc), message) from None


def read_secret(source: str, key: str, env: str | None, file: Path | None) -> SecretStr:
    """A credential from an environment variable or a file (surrounding whitespace removed)."""
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            state = "empty" if env in os.environ else "unset"
            raise ConfigError(source, key, f"expected the environment variable {env} to hold it, found {env} {state}")
        return SecretStr(value)
    if file is None:
        raise ConfigError(source, key, "expected an environment variable or a file")
    try:
        value = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source, key, f"expected a readable file, found {file}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not value:
        raise ConfigError(source, key, f"expected the secret in {file}, found an empty file")
    return SecretStr(value)


def _credentials(out: _RemoteOutput, index: int, source: str) -> tuple[SecretStr | None, tuple[str, SecretStr] | None]:
    auth = out.auth
    if auth is None:
        return None, None
    if auth.username:
        field = "password_env" if auth.password_env else "password_file"
        password = read_secret(source, _key(index, ("auth", field)), auth.password_env, auth.password_file)
        return None, (auth.username, password)
    field = "api_key_env" if auth.api_key_env else "api_key_file"
    return read_secret(source, _key(index, ("auth", field)), auth.api_key_env, auth.api_key_file), None


class _Secrets(NamedTuple):
    api_key: SecretStr | None
    basic: tuple[str, SecretStr] | None
    routing_key: SecretStr | None


def _default_name(out: SearchOutput | WebhookOutput) -> str:
    """Stable across runs and reordering of `outputs:`, so a spool always meets its own sink again."""
    kind: str
    if isinstance(out, SearchOutput):
        kind, identity = out.type, f"{out.url}|{out.index_prefix}"
        if out.uses_data_stream and out.namespace != "default":
            identity += f"|{out.namespace}"
    else:
        kind = "webhook" if out.format == "generic" else out.format
        identity = f"{out.url}|{out.routing_key_env}|{out.routing_key_file}"
    return f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def _api_key(secret: SecretStr) -> str | tuple[str, str]:
    # Accept both the "id:key" pair and the encoded form Elasticsearch hands out.
    key_id, sep, key = secret.get_secret_value().partition(":")
    return (key_id, key) if sep else secret.get_secret_value()


def _secrets(out: SearchOutput | WebhookOutput, index: int, source: str) -> _Secrets:
    """The credentials an output needs, read now: a missing one is a configuration error."""
    api_key, basic = _credentials(out, index, source)
    routing_key = None
    if isinstance(out, WebhookOutput) and out.format == "pagerduty":
        key_field = "routing_key_file" if out.routing_key_file else "routing_key_env"
        routing_key = read_secret(source, _key(index, (key_field,)), out.routing_key_env, out.routing_key_file)
    if isinstance(out, SearchOutput) and out.type == "opensearch" and api_key is not None:
        raise ConfigError(source, _key(index, ("auth",)), "opensearch takes username with password_env/password_file")
    return _Secrets(api_key, basic, routing_key)


def _build_remote(
    out: SearchOutput | WebhookOutput, index: int, name: str, spool_dir: Path, observer: str, source: str
) -> Sink:
    api_key, basic, routing_key = _secrets(out, index, source)
    basic_auth = (basic[0], basic[1].get_secret_value()) if basic else None
    backoff = Backoff(out.backoff_base, max(out.backoff_max, out.backoff_base))
    try:
        spool = Spool(spool_dir / f"{name}.db", max_items=out.spool_max_items, max_bytes=out.spool_max_bytes)
    except SpoolError as exc:
        raise ConfigError(source, "spool_dir", str(exc)) from None
    if not out.verify:
        log.warning("%s: TLS certificate verification is off", name)
    common: dict[str, Any] = {"min_severity": out.min_severity, "events": out.events, "backoff": backoff}
    # Client libraries load only when an output of theirs is configured.
    if isinstance(out, SearchOutput):
        client: OpenSearch | Elasticsearch
        if out.type == "opensearch":
            from sensor.output.opensearch import OpenSearchSink, opensearch_client

            client = opensearch_client(
                out.url, basic_auth=basic_auth, ca_file=out.ca_file, verify=out.verify, timeout=out.timeout
            )
            sink_class: type[Any] = OpenSearchSink
        else:
            from sensor.output.elasticsearch import ElasticsearchSink, elasticsearch_client

            client = elasticsearch_client(
                out.url,
                api_key=_api_key(api_key) if api_key else None,
                basic_auth=basic_auth,
                ca_file=out.ca_file,
                verify=out.verify,
                timeout=out.timeout,
            )
            sink_class = ElasticsearchSink
        return sink_class(
            name,
            spool,
            client,
            index_prefix=out.index_prefix,
            data_stream=out.uses_data_stream,
            namespace=out.namespace,
            batch_size=out.batch_size,
            **common,
        )
    from sensor.output.webhook import WebhookSink

    verify: bool | str = str(out.ca_file) if out.ca_file and out.verify else out.verify
    return WebhookSink(
        name,
        spool,
        out.url,
        format=out.format,
        routing_key=routing_key.get_secret_value() if routing_key else None,
        observer=observer,
        auth_header=f"Bearer {api_key.get_secret_value()}" if api_key else None,
        basic_auth=basic_auth,
        verify=verify,
        timeout=out.timeout,
        throttle_seconds=out.throttle_seconds,
        **common,
    )


def validate_outputs(specs: list[dict[str, Any]], source: str = "config") -> list[Any]:
    """Check every `outputs:` entry (types, URLs, names) without building anything."""
    validated = [_validate(raw, index, source) for index, raw in enumerate(specs)]
    names: dict[str, int] = {}
    for index, out in enumerate(validated):
        if isinstance(out, JsonlOutput):
            continue
        name = out.name or _default_name(out)
        if name in names:
            raise ConfigError(
                source,
                _key(index, ("name",)),
                f"sink name {name} is already used by outputs[{names[name]}]; each remote output needs its own name",
            )
        names[name] = index
    return validated


def preflight(
    specs: list[dict[str, Any]], *, spool_dir: Path, source: str, keys: list[str] | None = None
) -> list[Any]:
    """Every check an output gets before it is built, without opening anything: the entry itself
    (types, URLs, names), its credentials (environment variables, key files), and that its
    file or spool directory can be written. `check-config`, `replay` and `live` all run this.
    `keys`: how each entry is named in messages (default outputs[N].path)."""
    validated = validate_outputs(specs, source)
    for index, out in enumerate(validated):
        if isinstance(out, JsonlOutput):
            check_writable(out.path, source, keys[index] if keys else _key(index, ("path",)))
        else:
            _secrets(out, index, source)
    if any(not isinstance(out, JsonlOutput) for out in validated):
        check_writable(spool_dir, source, "spool_dir", directory=True)
    return validated


def build_validated(
    specs: list[dict[str, Any]], *, spool_dir: Path, observer: str, source: str, keys: list[str] | None = None
) -> list[Sink]:
    """Check every `outputs:` entry first (so a typo in the last one starts nothing), then build them."""
    validated = preflight(specs, spool_dir=spool_dir, source=source, keys=keys)
    sinks: list[Sink] = []
    try:
        for index, out in enumerate(validated):
            if isinstance(out, JsonlOutput):
                key = keys[index] if keys else _key(index, ("path",))
                sink: Sink = open_jsonl(out.path, source, key, min_severity=out.min_severity)
                sinks.append(sink if out.events else AlertsOnly(sink))
            else:
                sinks.append(_build_remote(out, index, out.name or _default_name(out), spool_dir, observer, source))
    except BaseException:
        for built in sinks:
            built.close(0.0)
        raise
    return sinks
