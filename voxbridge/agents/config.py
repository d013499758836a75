"""`agents.toml`: which agents exist, how turns reach them, and the routing rules.

Loading validates everything and reports `file:line: key: reason` (unknown keys, duplicate ids,
rules naming missing agents, bad URLs, unknown kinds, invalid regexes; rule regexes run on RE2,
linear in the transcript's length). `${VAR}` and `${VAR:-default}` are interpolated from the environment in string values;
resolved URLs, headers, API keys and HMAC secrets are secrets: never in reprs, logs or errors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..config import read_config_file
from ..errors import ConfigError, toml_error_where

AGENT_KINDS = ("n8n", "webhook", "openai")
STRATEGIES = ("user_preference", "content_based", "round_robin", "broadcast")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_REGEX_LEN = 500
SECRET_KEYS = frozenset({"url", "headers", "hmac_secret", "api_key"})  # never echoed in an error
MAX_REGEX_PROGRAM = 800  # RE2 instructions: matching costs about this times the transcript length


def redact_url(url: str) -> str:
    """scheme://host:port/… — enough to tell endpoints apart, never a path key or credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}/…"
    except ValueError:
        return "<invalid url>"


def _secret(value) -> str:
    return "<set>" if value else "<unset>"


@attrs.frozen
class AgentTts:
    voice: str = ""  # a Piper .onnx path; "" = the daemon's voice


@attrs.frozen
class AgentSpec:
    id: str
    name: str
    kind: str
    url: str = attrs.field(repr=lambda u: redact_url(u))
    description: str = ""
    streaming: bool = True
    timeout_s: float = 30.0  # to the first byte, and the longest gap between chunks
    total_timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    retries: int = 2
    max_response_bytes: int = 1 << 20
    max_concurrency: int = 8  # requests in flight to this agent
    circuit_failures: int = 5  # consecutive failures that open the circuit
    circuit_reset_s: float = 30.0  # open circuit: how long before one trial request
    headers: dict[str, str] = attrs.field(factory=dict, repr=lambda h: f"<{len(h)} headers>")
    hmac_secret: str = attrs.field(default="", repr=_secret)
    api_key: str = attrs.field(default="", repr=_secret)  # openai: Authorization: Bearer
    model: str = ""  # openai: the model name
    system_prompt: str = ""  # openai: the system message
    max_tokens: int = 300  # openai: longest answer (~1.5 min of speech); a runaway model stops there
    temperature: float = 0.7  # openai: sampling temperature, 0-2
    keywords: tuple[str, ...] = ()
    priority: int = 0
    guilds: tuple[str, ...] = ()  # empty: every guild
    allowed_roles: tuple[str, ...] = ()  # empty: everyone
    tts: AgentTts = attrs.field(factory=AgentTts)

    def allowed_in(self, guild_id: str, roles: tuple[str, ...] | frozenset[str] = ()) -> bool:
        if self.guilds and guild_id not in self.guilds:
            return False
        return not self.allowed_roles or bool(set(self.allowed_roles) & set(roles))


@attrs.frozen
class RuleMatch:
    keywords: tuple[str, ...] = ()
    regex: str = ""
    guilds: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@attrs.frozen
class Rule:
    id: str
    agents: tuple[str, ...]
    priority: int = 0
    match: RuleMatch = attrs.field(factory=RuleMatch)
    compiled: Any = attrs.field(default=None, eq=False, repr=False)  # an RE2 pattern (see compile_rule_regex)


@attrs.frozen
class RoutingSpec:
    strategy: str = "user_preference"
    default_agent: str = ""
    history_turns: int = 5
    classifier_agent: str = ""  # content_based: an agent that answers with an agent id


@attrs.frozen
class AgentsConfig:
    routing: RoutingSpec
    agents: tuple[AgentSpec, ...]
    rules: tuple[Rule, ...] = ()
    source: str = ""
    version: str = ""  # hash of the file's text: tells reloads apart

    def get(self, agent_id: str) -> AgentSpec | None:
        return next((a for a in self.agents if a.id == agent_id), None)

    def with_urls(self, urls: dict[str, str]) -> AgentsConfig:
        """A copy with some agents pointed elsewhere (the simulator's demo agents)."""
        agents = tuple(attrs.evolve(a, url=urls.get(a.id, a.url)) for a in self.agents)
        return attrs.evolve(self, agents=agents)


class _Locator:
    """Finds the line of `key` inside the n-th `[[table]]` block or the `[table]` table.

    The headers are indexed once, so each lookup costs the lines of one block: parsing stays
    linear in the file's size (a scan of the whole file per key made 4,000 agents take 73 s)."""

    _HEADER = re.compile(r"^\s*\[(\[?)\s*([^\[\]]*?)\s*\]")

    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self._blocks: dict[tuple[str, bool], list[int]] | None = None  # indexed on the first lookup (an error)

    def _index(self) -> None:
        self.lines = self.text.splitlines()
        self._blocks = {}  # (table, array) -> header line numbers
        self._next: dict[int, int] = {}  # header line -> the next header that is not its sub-table
        headers: list[tuple[int, str]] = []
        for i, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line) if line.lstrip().startswith("[") else None
            if m:
                self._blocks.setdefault((m.group(2), bool(m.group(1))), []).append(i)
                headers.append((i, m.group(2)))
        for k, (line_no, name) in enumerate(headers):
            end = len(self.lines) + 1
            for later, later_name in headers[k + 1:]:
                if not later_name.startswith(name + "."):
                    end = later
                    break
            self._next[line_no] = end

    def where(self, table: str, index: int | None = None, key: str | None = None) -> str:
        if self._blocks is None:
            self._index()
        starts = self._blocks.get((table, index is not None), [])
        pos = 0 if index is None else index
        if pos >= len(starts):
            return self.source
        line_no = starts[pos]
        if key:
            for j in range(line_no, self._next[line_no] - 1):
                line = self.lines[j].lstrip()
                if line.startswith(key) and line[len(key):].lstrip().startswith("="):
                    return f"{self.source}:{j + 1}"
        return f"{self.source}:{line_no}"


def _interpolate(value: str, env: dict[str, str], where: str, key: str) -> str:
    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        raise ConfigError(where, f"{key}: environment variable {name} is not set (or use ${{{name}:-default}})")

    return _ENV_RE.sub(sub, value) if "${" in value else value


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, where: str, key: str) -> Any:
    if typ is str and type(value) is str and len(value) <= 100_000:  # the common case, first
        return value
    origin = typing.get_origin(typ)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise ConfigError(where, f"{key}: expected a list of strings, got {type(value).__name__}")
        if len(value) > 1000:
            raise ConfigError(where, f"{key}: at most 1000 entries")
        return tuple(str(v) for v in value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(where, f"{key}: expected a table of strings")
        return value
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        if key.rpartition(".")[2] in SECRET_KEYS:  # a secret in the wrong place is still a secret
            shown = "(value not shown: secret)"
        else:
            shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise ConfigError(where, f"{key}: expected {typ.__name__}, got {type(value).__name__} {shown}")
    if typ is str and len(value) > 100_000:
        raise ConfigError(where, f"{key}: too long")
    return value


@functools.cache
def _known_keys(cls, skip: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(cls) if f.name not in skip and f.name != "compiled")


def _table(raw: Any, cls, where_of, name: str, env: dict[str, str], *, skip=(), interpolate=True) -> dict[str, Any]:
    """Check a TOML table against an attrs class: known keys, right types, env interpolation."""
    if not isinstance(raw, dict):
        raise ConfigError(where_of(None), f"{name}: must be a table")
    hints = _hints(cls)
    known = _known_keys(cls, tuple(skip))
    out = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(where_of(key), f"{name}.{key}: unknown key; known: {', '.join(known)}")
        if key in ("tts", "match"):
            out[key] = value  # nested tables are checked by the caller
            continue
        try:  # the line is looked up only for an error
            value = _coerce(value, hints[key], "", f"{name}.{key}")
            if interpolate and isinstance(value, str):
                value = _interpolate(value, env, "", f"{name}.{key}")
            if isinstance(value, dict):
                value = {str(k): _interpolate(v, env, "", f"{name}.{key}.{k}") for k, v in value.items()}
        except ConfigError as exc:
            raise ConfigError(where_of(key), exc.reason) from None
        out[key] = value
    return out


def compile_rule_regex(pattern: str, where: str, key: str):
    """A rule's regex, compiled by RE2 (google-re2): matching time is linear in the transcript's
    length for every pattern, so no rule can freeze routing (Python's `re` backtracks: `((a+))+$`
    on a long transcript takes minutes). RE2 has no lookarounds and no backreferences."""
    import re2

    if len(pattern) > MAX_REGEX_LEN:
        raise ConfigError(where, f"{key}: regex longer than {MAX_REGEX_LEN} characters")
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # the error is ours to report, with file:line
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        hint = ""
        if re.search(r"\\[1-9]|\(\?(<?[=!]|P=)", pattern) or "perl operator" in detail or "escape sequence" in detail:
            hint = " (rules use RE2, a linear-time engine: no lookarounds, backreferences or \\u escapes)"
        raise ConfigError(where, f"{key}: invalid regex: {detail}{hint}") from None
    if compiled.programsize > MAX_REGEX_PROGRAM:
        raise ConfigError(where, f"{key}: regex too complex ({compiled.programsize} RE2 instructions, limit {MAX_REGEX_PROGRAM}): "
                                 "large counted repeats such as {200} cost that much on every transcript; simplify the pattern")
    return compiled


def _check_range(value, lo, hi, where: Callable[[], str], key, unit=""):
    if not lo <= value <= hi:
        raise ConfigError(where(), f"{key}: must be between {lo} and {hi}{unit}, got {value}")


def parse_agents(text: str, source: str = "agents.toml", env: dict[str, str] | None = None) -> AgentsConfig:
    env = dict(os.environ) if env is None else env
    loc = _Locator(text, source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_error_where(source, exc), f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: "[[[[..." would otherwise escape
        raise ConfigError(source, "invalid TOML: nested too deeply") from None
    for key in data:
        if key not in ("routing", "agents", "rules"):
            raise ConfigError(loc.where(key), f"unknown top-level key {key!r}; expected [routing], [[agents]] and [[rules]]")

    routing = RoutingSpec(**_table(data.get("routing", {}), RoutingSpec, lambda k: loc.where("routing", None, k), "routing", env))
    if routing.strategy not in STRATEGIES:
        raise ConfigError(loc.where("routing", None, "strategy"), f"routing.strategy: unknown strategy {routing.strategy!r}; known: {', '.join(STRATEGIES)}")
    _check_range(routing.history_turns, 0, 100, lambda: loc.where("routing", None, "history_turns"), "routing.history_turns")

    agents_raw = data.get("agents", [])
    if not isinstance(agents_raw, list) or not agents_raw:
        raise ConfigError(source, "no agents: add at least one [[agents]] table")
    agents: list[AgentSpec] = []
    ids: set[str] = set()
    for i, raw in enumerate(agents_raw):
        def where(k, i=i):
            return loc.where("agents", i, k)

        name = f"agents[{i}]"
        kwargs = _table(raw, AgentSpec, where, name, env)
        for required in ("id", "kind", "url"):
            if required not in kwargs:
                raise ConfigError(where(None), f"{name}: missing required key {required!r}")
        agent_id = kwargs["id"]
        if not _ID_RE.match(agent_id):
            raise ConfigError(where("id"), f"{name}.id: {agent_id!r} must be lowercase letters, digits, '-' or '_' (max 64)")
        if agent_id in ids:
            raise ConfigError(where("id"), f"{name}.id: duplicate agent id {agent_id!r}")
        if kwargs["kind"] not in AGENT_KINDS:
            raise ConfigError(where("kind"), f"{name}.kind: unknown kind {kwargs['kind']!r}; known: {', '.join(AGENT_KINDS)}")
        url = kwargs["url"]
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(where("url"), f"{name}.url: not an http(s) URL ({redact_url(url)})")
        for key in ("timeout_s", "total_timeout_s", "connect_timeout_s", "circuit_reset_s"):
            if key in kwargs:
                _check_range(kwargs[key], 0.001, 3600, functools.partial(where, key), f"{name}.{key}", " seconds")
        for key, lo, hi in (("retries", 0, 10), ("max_response_bytes", 1024, 1 << 30), ("max_concurrency", 1, 1000),
                            ("circuit_failures", 1, 1000), ("priority", -10_000, 10_000), ("max_tokens", 1, 100_000),
                            ("temperature", 0, 2)):
            if key in kwargs:
                _check_range(kwargs[key], lo, hi, functools.partial(where, key), f"{name}.{key}")
        if kwargs["kind"] == "openai" and not kwargs.get("model"):
            raise ConfigError(where(None), f"{name}: kind 'openai' needs model = \"...\"")
        if "tts" in kwargs:
            kwargs["tts"] = AgentTts(**_table(kwargs["tts"], AgentTts, lambda k, i=i: loc.where("agents", i), f"{name}.tts", env))
        kwargs["keywords"] = tuple(k.lower() for k in kwargs.get("keywords", ()))
        kwargs.setdefault("name", agent_id)
        agents.append(AgentSpec(**kwargs))
        ids.add(agent_id)

    rules: list[Rule] = []
    rule_ids: set[str] = set()
    rules_raw = data.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(source, "rules: use [[rules]] tables")
    for i, raw in enumerate(rules_raw):
        def where(k, i=i):
            return loc.where("rules", i, k)

        name = f"rules[{i}]"
        kwargs = _table(raw, Rule, where, name, env)
        for required in ("id", "agents"):
            if required not in kwargs:
                raise ConfigError(where(None), f"{name}: missing required key {required!r}")
        if kwargs["id"] in rule_ids:
            raise ConfigError(where("id"), f"{name}.id: duplicate rule id {kwargs['id']!r}")
        rule_ids.add(kwargs["id"])
        if not kwargs["agents"]:
            raise ConfigError(where("agents"), f"{name}.agents: name at least one agent")
        for agent_id in kwargs["agents"]:
            if agent_id not in ids:
                raise ConfigError(where("agents"), f"{name}.agents: no agent with id {agent_id!r}")
        match = RuleMatch(**_table(kwargs.get("match", {}), RuleMatch, lambda k, i=i: where("match"), f"{name}.match", env, interpolate=False))
        match = attrs.evolve(match, keywords=tuple(k.lower() for k in match.keywords))
        compiled = compile_rule_regex(match.regex, where("match"), f"{name}.match.regex") if match.regex else None
        kwargs["match"] = match
        rules.append(Rule(compiled=compiled, **kwargs))

    if not routing.default_agent:
        routing = attrs.evolve(routing, default_agent=agents[0].id)
    elif routing.default_agent not in ids:
        raise ConfigError(loc.where("routing", None, "default_agent"), f"routing.default_agent: no agent with id {routing.default_agent!r}")
    if routing.classifier_agent and routing.classifier_agent not in ids:
        raise ConfigError(loc.where("routing", None, "classifier_agent"), f"routing.classifier_agent: no agent with id {routing.classifier_agent!r}")
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return AgentsConfig(routing=routing, agents=tuple(agents), rules=tuple(sorted(rules, key=lambda r: -r.priority)),
                        source=source, version=version)


def read_agents_bytes(path: str | Path) -> bytes:
    """agents.toml's bytes; ConfigError if missing, unreadable, not a regular file or over 8 MiB."""
    return read_config_file(path, "agents file")


def load_agents(path: str | Path, env: dict[str, str] | None = None) -> AgentsConfig:
    try:
        text = read_agents_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    return parse_agents(text, str(path), env)
