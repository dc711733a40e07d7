"""The sensor's own log on stderr: every line time-stamped (ISO 8601, UTC), as text or JSON."""
from __future__ import annotations

import datetime as dt
import logging
import sys

# The HTTP clients log every failed request of an outage; the sinks count and report them instead.
_NOISY = ("elastic_transport", "opensearch", "urllib3")
_HANDLER_NAME = "phi-sensor-stderr"


def iso_time(created: float) -> str:
    """2026-01-31T12:34:56.789Z"""
    moment = dt.datetime.fromtimestamp(created, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-01-31T12:34:56.789Z phi-sensor: message`"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_time(record.created)} phi-sensor: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One ECS-style JSON object per line: @timestamp, log.level, log.logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "@timestamp": iso_time(record.created),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        import orjson  # loaded with the first JSON line: a replay's selector starts before the output libraries load

        return orjson.dumps(doc).decode()


FORMATTERS: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter}


def configure_logging(log_format: str = "text") -> None:
    """Route every logger to stderr in the chosen format (called again, it switches format)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # others (a test harness's) stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)
