"""Structured logging: key=value lines (default) or JSON, one line per event."""

from __future__ import annotations

import json
import logging
import sys
import time


class KvFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name}
        message = record.getMessage()
        fields = {}
        for part in message.split(" "):
            key, sep, value = part.partition("=")
            if sep and key.isidentifier():
                fields[key] = value.strip("'\"")
        doc.update(fields or {"msg": message})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "kv", stream=sys.stderr, levels: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KvFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "faster_whisper", "piper", "discord"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for spec in levels:  # "voxbridge.stt=debug": per-module levels win
        name, _, lvl = spec.partition("=")
        logging.getLogger(name.strip()).setLevel(lvl.strip().upper())
