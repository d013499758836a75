"""Structured logging: one line per event, key=value (default) or JSON, through one formatter.

Two kinds of records reach it (structlog's `ProcessorFormatter` on the root handler):
- events (`log_event`, behind `Services.emit`): structlog event dicts, rendered from their fields;
  a value is never parsed back out of a formatted message, so it cannot be split or truncated;
- plain `logging` calls (`log.info("event=x guild=%s", guild)`): key=value lines keep the message
  as written with every `%s` value escaped; JSON takes each `key=%s` value straight from its
  argument (the template is split into fields, never the formatted text).

Escaping: a value that is not a plain token (whitespace, quotes, '=', backslash, control
characters, empty) is written as a JSON string (`user="a b"`, `guild="x\\nlevel=error"`), and any
control character left in a line is escaped, so no value can end its field early or forge a line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from structlog.stdlib import ProcessorFormatter

_PLAIN = re.compile(r"[^\s\"'=\\\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPEC = re.compile(r"%(?:\((\w+)\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_KEY = re.compile(r"([A-Za-z_]\w*)=(.*)", re.DOTALL)
_META = ("ts", "level", "logger")


def kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _one_line(text: str) -> str:
    return _UNPRINTABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text
    )


def escaped_message(template: Any, args: Any) -> str:
    """The formatted message with every %s value quoted/escaped and the result on one line."""
    msg = str(template)
    if args:
        specs = [m for m in _SPEC.finditer(msg) if m.group(2) != "%"]
        try:
            if isinstance(args, Mapping):
                named = {m.group(1) for m in specs if m.group(2) == "s"}
                msg = msg % {k: kv_value(v) if k in named else v for k, v in args.items()}
            elif len(specs) == len(args) and not any("*" in m.group() for m in specs):
                msg = msg % tuple(kv_value(a) if m.group(2) == "s" else a for a, m in zip(args, specs, strict=True))
            else:
                msg = _formatted(msg, args)
        except (TypeError, ValueError, KeyError):
            msg = _formatted(msg, args)
    return _one_line(msg)


def _formatted(msg: str, args: Any) -> str:
    try:
        return msg % args
    except (TypeError, ValueError, KeyError):
        return f"{msg} {args!r}"  # what logging itself would have failed on: shown, not lost


def _spec_value(spec: re.Match[str], arg: Any) -> str:
    """One `%` spec applied to its argument; `%s`/`%r` of a string give the string itself."""
    if spec.group(2) in "sr" and isinstance(arg, str):
        return arg
    if spec.group(2) == "s":
        return str(arg)
    return (spec.group().replace(f"({spec.group(1)})", "") if spec.group(1) else spec.group()) % (arg,)


def template_fields(template: Any, args: Any) -> dict[str, str] | None:
    """The `key=value` fields of a plain logging call, read from its template: each value is its
    argument formatted alone (`%s` of "a b c" stays "a b c"), never re-read from the formatted
    line. Free text goes to `msg`. None when the template and its arguments do not match."""
    template = str(template)
    named = args if isinstance(args, Mapping) else None
    positional = list(args) if isinstance(args, tuple) else []
    fields: dict[str, str] = {}
    free: list[str] = []
    try:
        for token in template.split():
            out, pos = [], 0
            for spec in _SPEC.finditer(token):
                out.append(token[pos : spec.start()])
                pos = spec.end()
                if spec.group(2) == "%":
                    out.append("%")
                elif "*" in spec.group():
                    return None
                elif named is not None and spec.group(1):
                    out.append(_spec_value(spec, named[spec.group(1)]))
                elif named is None and not spec.group(1):
                    out.append(_spec_value(spec, positional.pop(0)))
                else:
                    return None
            out.append(token[pos:])
            text = "".join(out)
            key = _KEY.fullmatch(token)
            if key and _KEY.fullmatch(text):
                name = key.group(1)
                if name not in fields and name not in _META:  # the first wins; ts/level/logger are ours
                    fields[name] = text[len(name) + 1 :]
            else:
                free.append(text)
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    if positional:
        return None
    if free:
        fields["msg"] = " ".join(free)
    return fields


# --- events ---------------------------------------------------------------------------------------
class _EventDict(dict):
    """An event's fields as the log record's message: ProcessorFormatter reads the dict; any other
    handler (pytest's capture, a handler set up elsewhere) gets the key=value text from str()."""

    def __str__(self) -> str:
        return _one_line(" ".join(f"{k}={kv_value(v)}" for k, v in self.items()))


def _wrap(logger: Any, name: str, event_dict: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = ProcessorFormatter.wrap_for_formatter(logger, name, event_dict)
    fields = dict(args[0])
    return (_EventDict(event=fields.pop("event"), **fields),), kwargs


_events = structlog.wrap_logger(
    logging.getLogger("voxbridge"),
    processors=[structlog.stdlib.filter_by_level, _wrap],
    wrapper_class=structlog.stdlib.BoundLogger,
)


def log_event(kind: str, fields: Mapping[str, Any]) -> None:
    """The default observer of `Services.emit`: one line per event with its fields. What people
    said stays out of logs (`text` becomes `chars`); `turn_played` is the per-turn summary line
    with every stage timing (ms from the end of the utterance; its `ended_at`, a trio clock
    reading for benchmarks, is not logged)."""
    out = {k: v for k, v in fields.items() if k not in ("timings", "text", "ended_at")}
    if "text" in fields:
        out["chars"] = len(str(fields["text"]))
    if kind == "turn_played":
        out.update(fields.get("timings") or {})
    _events.info(kind, **out)


# --- rendering ------------------------------------------------------------------------------------
def _exc_text(record: logging.LogRecord, event: MutableMapping[str, Any]) -> str | None:
    exc_info = event.pop("exc_info", None) or record.exc_info
    if exc_info is True:
        exc_info = sys.exc_info()
    if not exc_info or not isinstance(exc_info, tuple) or exc_info[0] is None:
        return None
    return logging.Formatter().formatException(exc_info)


def _split(event: MutableMapping[str, Any]) -> tuple[logging.LogRecord, bool, Any, MutableMapping[str, Any]]:
    """The record, whether it is an event, the plain call's arguments (ProcessorFormatter
    cleared them on its copy and kept them aside), the event's fields."""
    record = event.pop("_record")
    from_structlog = event.pop("_from_structlog")
    args = event.pop("positional_args", ())
    return record, from_structlog, args, event


def render_kv(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    record, from_structlog, args, event = _split(event_dict)
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
    exc = _exc_text(record, event)
    line = f"ts={ts} level={record.levelname.lower()} logger={kv_value(record.name)} "
    if from_structlog:
        line += " ".join(f"{k}={kv_value(v)}" for k, v in event.items() if k not in _META)
    else:
        line += escaped_message(record.msg, args)
    if exc:
        line += f" exc={kv_value(exc)}"
    return _one_line(line)


def render_json(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    record, from_structlog, args, event = _split(event_dict)
    doc: dict[str, Any] = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name}
    exc = _exc_text(record, event)
    if from_structlog:
        fields: Mapping[str, Any] = event
    else:
        fields = template_fields(record.msg, args) or {"msg": escaped_message(record.msg, args)}
    for key, value in fields.items():
        if key not in doc:
            doc[key] = value
    if exc:
        doc["exc"] = exc
    return json.dumps(doc, default=str)


def formatter(fmt: str = "kv") -> logging.Formatter:
    """The one formatter for events and plain logging calls."""
    return ProcessorFormatter(processors=[render_json if fmt == "json" else render_kv], pass_foreign_args=True)


def setup_logging(level: str = "info", fmt: str = "kv", stream=sys.stderr, levels: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "faster_whisper", "piper", "discord"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for spec in levels:  # "voxbridge.stt=debug": per-module levels win
        name, _, lvl = spec.partition("=")
        logging.getLogger(name.strip()).setLevel(lvl.strip().upper())
