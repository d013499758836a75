"""One way a settings file becomes typed objects, shared by voxbridge.toml and agents.toml.

attrs validators check each value (wrapped by `check`, so a failure names its key), one cattrs
converter structures the parsed TOML with unknown keys forbidden, and `Source` maps cattrs' error
paths (`("agents", 2, "timeout_s")`) back to `file:line: key: reason` or the environment variable
that set the value. Values may come from TOML (typed) or the environment (`EnvText`, the only text
that may stand for a number, a boolean or a list).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from .errors import ConfigError, toml_error_where

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

MAX_STRING = 100_000  # characters in one value
MAX_LIST = 1000  # entries in one list
MAX_CONFIG_FILE_BYTES = 8 << 20  # voxbridge.toml and agents.toml: larger is a mistake or an attack
INTERNAL = "internal"  # field metadata: computed, never read from a file


class EnvText(str):
    """A value from an environment variable: "600", "off" and "a,b" stand for 600, False and ("a", "b")."""


class Invalid(ValueError):
    """A value a validator or a cross-field rule refused: `reason`, and the key path below the object
    that raised it (empty: the object itself). cattrs reports a failed `__init__` without a key."""

    def __init__(self, reason: str, *path: str | int):
        super().__init__(reason)
        self.reason = reason
        self.path: KeyPath = path


class _Mismatch(TypeError):
    """A value of the wrong type. The message is written by `Source`, which knows whether the key is a
    secret (the value is then not shown)."""

    def __init__(self, expected: str, value: Any):
        super().__init__(f"expected {expected}")
        self.expected = expected
        self.value = value


def check(validator: Callable[[Any, Any, Any], Any], says: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """An attrs validator whose failure reads `says` (formatted with `value`) and names its field."""

    def run(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        try:
            validator(inst, attribute, value)
        except (ValueError, TypeError):
            raise Invalid(says.format(value=value), attribute.name) from None

    return run


def between(lo: float, hi: float, unit: str = "") -> Callable[[Any, attrs.Attribute, Any], None]:
    in_range = attrs.validators.and_(attrs.validators.ge(lo), attrs.validators.le(hi))
    return check(in_range, f"must be between {lo} and {hi}{unit}, got {{value!r}}")


def one_of(*choices: str, says: str = "") -> Callable[[Any, attrs.Attribute, Any], None]:
    default = f"must be one of {', '.join(map(repr, choices))}, got {{value!r}}"
    return check(attrs.validators.in_(choices), says or default)


# --- the converter: strict TOML types; environment text converted ---------------------------------

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _number(kind: type, expected: str) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, EnvText):
            try:
                return kind(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or type(value) is int):
            return kind(value)
        raise _Mismatch(expected, value)

    return structure


def _bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, EnvText) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise _Mismatch("true or false", value)


def _str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise _Mismatch("a string", value)
    if len(value) > MAX_STRING:
        raise Invalid("too long")
    return str(value)


def _strings(value: Any, _: Any) -> tuple[str, ...]:
    if isinstance(value, EnvText):  # comma-separated
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list) or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        raise _Mismatch("a list of strings", value)
    if len(value) > MAX_LIST:
        raise Invalid(f"at most {MAX_LIST} entries")
    return tuple(str(v) for v in value)


def _string_table(value: Any, _: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Mismatch("a table of strings", value)
    return dict(value)


def _table_hook(cls: type) -> Callable[[Any, Any], Any]:
    """An attrs class from a TOML table (anything else is refused before cattrs looks inside)."""
    internal = {f.name: override(omit=True) for f in attrs.fields(cls) if f.metadata.get(INTERNAL)}
    structure = make_dict_structure_fn(cls, converter, **typing.cast(dict[str, Any], internal))

    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid("must be a table")
        return structure(value, cls)

    return hook


converter = cattrs.Converter(forbid_extra_keys=True)
converter.register_structure_hook(int, _number(int, "an integer"))
converter.register_structure_hook(float, _number(float, "a number"))
converter.register_structure_hook(bool, _bool)
converter.register_structure_hook(str, _str)
converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)
converter.register_structure_hook_func(lambda t: t == dict[str, str], _string_table)
converter.register_structure_hook_factory(attrs.has, _table_hook)


# --- files and errors ---------------------------------------------------------------------------------


def read_config_file(path: str | Path, what: str, limit: int = MAX_CONFIG_FILE_BYTES) -> bytes:
    """A settings file's bytes, or ConfigError saying why not: missing or unreadable, a directory,
    a FIFO or device (reading one would block or never end: /dev/zero), larger than `limit`."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens without a writer
    except OSError as exc:
        raise ConfigError(source, f"cannot read {what}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(source, f"{what} is a directory; point the setting at the file itself")
        if not stat.S_ISREG(mode):
            raise ConfigError(source, f"{what} is {_file_kind(mode)}, not a regular file; use a plain file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise ConfigError(source, f"{what} is larger than {limit >> 20} MiB; this is not a settings file")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(source, f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_error_where(source, exc), f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: "[[[[..." would otherwise escape
        raise ConfigError(source, "invalid TOML: nested too deeply") from None


class Locator:
    """The line of a key path in TOML text: `("agents", 2, "tts", "voice")` is the `voice =` line in the
    `[agents.tts]` table of the third `[[agents]]` block (or its `tts = {...}` line, or the block's header).

    The headers are indexed on the first lookup (an error), so each lookup costs the lines of one block:
    parsing stays linear in the file's size (a scan of the whole file per key made 4,000 agents take 73 s)."""

    _HEADER = re.compile(r"^\s*\[(\[?)\s*([^\[\]]*?)\s*\]")

    def __init__(self, text: str):
        self.text = text
        self.lines: list[str] = []
        self._blocks: dict[tuple[str, bool], list[int]] | None = None  # (table, array) -> header line numbers
        self._names: dict[int, str] = {}  # header line -> table name, in file order
        self._ends: dict[int, int] = {}  # header line -> the next header that is not its sub-table

    def _index(self) -> dict[tuple[str, bool], list[int]]:
        self.lines = self.text.splitlines()
        blocks: dict[tuple[str, bool], list[int]] = {}
        for i, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line) if line.lstrip().startswith("[") else None
            if m:
                blocks.setdefault((m.group(2), bool(m.group(1))), []).append(i)
                self._names[i] = m.group(2)
        headers = list(self._names.items())
        for k, (line_no, name) in enumerate(headers):
            later = (n for n, later_name in headers[k + 1 :] if not later_name.startswith(name + "."))
            self._ends[line_no] = next(later, len(self.lines) + 1)
        self._blocks = blocks
        return blocks

    def line(self, path: KeyPath) -> int | None:
        if not path:
            return None
        blocks = self._blocks if self._blocks is not None else self._index()
        table = str(path[0])
        rest = path[1:]
        pos = rest[0] if rest and isinstance(rest[0], int) else None
        starts = blocks.get((table, pos is not None), [])
        if (pos or 0) >= len(starts):  # no header: maybe `table = {...}` above the first one
            return self._key_line(0, next(iter(self._names), len(self.lines) + 1), table)
        return self._within(starts[pos or 0], table, [k for k in rest if isinstance(k, str)])

    def _within(self, header: int, table: str, keys: list[str]) -> int:
        """The line of `keys` inside the block that starts at `header`, following sub-tables."""
        for key in keys:
            end = self._ends[header]
            subs = [n for n in range(header + 1, end) if n in self._names]
            found = self._key_line(header, subs[0] if subs else end, key)
            if found is not None:
                return found
            table = f"{table}.{key}"
            sub = next((n for n in subs if self._names[n] == table), None)
            if sub is None:
                return header
            header = sub
        return header

    def _key_line(self, header: int, end: int, key: str) -> int | None:
        """The line between `header` and `end` (exclusive) that assigns `key`, bare, quoted or dotted."""
        for j in range(header, end - 1):
            line = self.lines[j].lstrip()
            for spelled in (key, f'"{key}"', f"'{key}'"):
                if line.startswith(spelled) and line[len(spelled) :].lstrip()[:1] in ("=", "."):
                    return j + 1
        return None


class Source:
    """One file's values, named in errors: `file:line: key: reason`, or `VARIABLE: reason` for a value
    from the environment. `sections`: keys read `[vad].silence_ms` (voxbridge.toml), else
    `agents[0].url` (agents.toml); `nouns`: what an unknown key is called at each depth."""

    def __init__(
        self,
        name: str,
        text: str = "",
        *,
        sections: bool = False,
        nouns: tuple[str, ...] = ("key",),
        secrets: frozenset[str] = frozenset(),
        env: Mapping[tuple[str, str], str] | None = None,
    ):
        self.name = name
        self.sections = sections
        self.nouns = nouns
        self.secrets = secrets
        self.env = env or {}
        self.locator = Locator(text)

    def structure(self, data: Any, cls: type[T]) -> T:
        """`data` as a `cls`, or the ConfigError for the first problem cattrs found."""
        try:
            return converter.structure(data, cls)
        except BaseValidationError as exc:
            raise self.error(*self._explain(exc)) from None

    def key(self, path: KeyPath) -> str:
        head, *rest = path
        text = f"[{head}]" if self.sections else str(head)
        return text + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in rest)

    def where(self, path: KeyPath) -> str:
        line = self.locator.line(path)
        return f"{self.name}:{line}" if line else self.name

    def error(self, path: KeyPath, reason: str) -> ConfigError:
        variable = self.env.get((str(path[0]), str(path[1]))) if len(path) >= 2 else None
        if variable:
            return ConfigError(variable, reason)
        return ConfigError(self.where(path), f"{self.key(path)}: {reason}" if path else reason)

    def _explain(self, exc: BaseValidationError) -> tuple[KeyPath, str]:
        # A misspelt key explains the other errors (a required key then looks missing): it goes first.
        path, leaf = min(_leaves(exc, ()), key=lambda found: not isinstance(found[1], ForbiddenExtraKeysError))
        if isinstance(leaf, ForbiddenExtraKeysError):
            known = ", ".join(f.name for f in attrs.fields(leaf.cl) if f.init and not f.metadata.get(INTERNAL))
            noun = self.nouns[min(len(path), len(self.nouns) - 1)]
            return (*path, sorted(map(str, leaf.extra_fields))[0]), f"unknown {noun}; known: {known}"
        if isinstance(leaf, Invalid):
            return (*path, *leaf.path), leaf.reason
        if isinstance(leaf, _Mismatch):
            return path, f"expected {leaf.expected}, got {self._shown(path, leaf.value)}"
        if isinstance(leaf, KeyError) and path:
            return path[:-1], f"missing required key {path[-1]!r}"
        return path, str(leaf)

    def _shown(self, path: KeyPath, value: Any) -> str:
        if self.secrets.intersection(k for k in path if isinstance(k, str)):
            return f"{type(value).__name__} (value not shown: it may be a secret)"
        text = repr(value)
        return text if len(text) < 60 else text[:57] + "..."


def _leaves(exc: BaseException, path: KeyPath) -> Iterator[tuple[KeyPath, BaseException]]:
    """Each error inside cattrs' nested exception groups, with the key path cattrs noted on the way."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub, path + _step(sub))
    else:
        yield path, exc


def _step(exc: BaseException) -> KeyPath:
    for note in reversed(getattr(exc, "__notes__", [])):
        if isinstance(note, AttributeValidationNote):
            return (note.name,)
        if isinstance(note, IterableValidationNote):
            return (note.index,)
    return ()
