"""Structured logging: key=value lines (default) or JSON, one line per event."""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
import time
from collections.abc import Mapping

# Values interpolated with %s that are not a plain token (whitespace, quotes, '=', backslash,
# control characters, empty) are written as a JSON string: `user="a b"`, `guild="x\nlevel=error"`.
# So a value can neither end its field early nor start a forged line. `%r` values are repr()s
# (already quoted and escaped); anything still unprintable in the line is escaped at the end.
_PLAIN = re.compile(r"[^\s\"'=\\\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPEC = re.compile(r"%(?:\((\w+)\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FIELD = re.compile(r"(?:^|\s)([A-Za-z_]\w*)=(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\S*)")


def kv_value(value) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _one_line(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text)


def escaped_message(record: logging.LogRecord) -> str:
    """record.getMessage() with every %s value quoted/escaped and the result on one line."""
    msg, args = str(record.msg), record.args
    if args:
        specs = [m for m in _SPEC.finditer(msg) if m.group(2) != "%"]
        try:
            if isinstance(args, Mapping):
                named = {m.group(1) for m in specs if m.group(2) == "s"}
                msg = msg % {k: kv_value(v) if k in named else v for k, v in args.items()}
            elif len(specs) == len(args) and not any("*" in m.group() for m in specs):
                msg = msg % tuple(kv_value(a) if m.group(2) == "s" else a for a, m in zip(args, specs, strict=True))
            else:
                msg = record.getMessage()
        except (TypeError, ValueError, KeyError):
            msg = record.getMessage()
    return _one_line(msg)


class KvFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={kv_value(record.name)} {escaped_message(record)}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name}
        message = escaped_message(record)
        fields = {}
        for key, value in _FIELD.findall(message):
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = value.strip('"')
            elif value.startswith("'"):
                try:
                    value = ast.literal_eval(value)  # a repr() of a string (%r)
                except (ValueError, SyntaxError):
                    value = value.strip("'")
            fields[key] = value
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
