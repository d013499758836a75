"""`agents.toml`: which agents exist, how turns reach them, and the routing rules.

Loading validates everything and reports `file:line: key: reason` (unknown keys, duplicate ids,
rules naming missing agents, bad URLs, unknown kinds, invalid regexes; rule regexes run on RE2,
linear in the transcript's length), through the one mechanism of `voxbridge.confkit`. `${VAR}` and
`${VAR:-default}` are interpolated from the environment in string values; resolved URLs, headers,
API keys and HMAC secrets are secrets: never in reprs, logs or errors.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..confkit import INTERNAL, Invalid, KeyPath, Source, between, check, one_of, parse_toml, read_config_file
from ..errors import ConfigError

AGENT_KINDS = ("n8n", "webhook", "openai")
STRATEGIES = ("user_preference", "content_based", "round_robin", "broadcast")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_REGEX_LEN = 500
SECRET_KEYS = frozenset({"url", "headers", "hmac_secret", "api_key"})  # never echoed in an error
MAX_REGEX_PROGRAM = 800  # RE2 instructions: matching costs about this times the transcript length
_seconds = between(0.001, 3600, " seconds")
_valid_id = check(
    attrs.validators.matches_re(_ID_RE, func=re.match),
    "{value!r} must be lowercase letters, digits, '-' or '_' (max 64)",
)
_UNKNOWN_KIND = f"unknown kind {{value!r}}; known: {', '.join(AGENT_KINDS)}"


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


def _lower(words: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(w.lower() for w in words)


def _http_url(inst: Any, attribute: attrs.Attribute, url: str) -> None:
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port
    except ValueError:
        ok = False
    if not ok:
        raise Invalid(f"not an http(s) URL ({redact_url(url)})", attribute.name)


@attrs.frozen
class AgentTts:
    voice: str = ""  # a Piper .onnx path; "" = the daemon's voice


@attrs.frozen
class AgentSpec:
    id: str = attrs.field(validator=_valid_id)
    name: str = attrs.field(kw_only=True, default=attrs.Factory(lambda self: self.id, takes_self=True))  # default: id
    kind: str = attrs.field(validator=one_of(*AGENT_KINDS, says=_UNKNOWN_KIND))
    url: str = attrs.field(repr=lambda u: redact_url(u), validator=_http_url)
    description: str = ""
    streaming: bool = True
    # to the first byte, and the longest gap between chunks
    timeout_s: float = attrs.field(default=30.0, validator=_seconds)
    total_timeout_s: float = attrs.field(default=120.0, validator=_seconds)
    connect_timeout_s: float = attrs.field(default=5.0, validator=_seconds)
    retries: int = attrs.field(default=2, validator=between(0, 10))
    max_response_bytes: int = attrs.field(default=1 << 20, validator=between(1024, 1 << 30))
    # requests in flight to this agent
    max_concurrency: int = attrs.field(default=8, validator=between(1, 1000))
    # consecutive failures that open the circuit
    circuit_failures: int = attrs.field(default=5, validator=between(1, 1000))
    # open circuit: how long before one trial request
    circuit_reset_s: float = attrs.field(default=30.0, validator=_seconds)
    headers: dict[str, str] = attrs.field(factory=dict, repr=lambda h: f"<{len(h)} headers>")
    hmac_secret: str = attrs.field(default="", repr=_secret)
    api_key: str = attrs.field(default="", repr=_secret)  # openai: Authorization: Bearer
    model: str = ""  # openai: the model name
    system_prompt: str = ""  # openai: the system message
    # openai: longest answer (~1.5 min of speech); a runaway model stops there
    max_tokens: int = attrs.field(default=300, validator=between(1, 100_000))
    temperature: float = attrs.field(default=0.7, validator=between(0, 2))  # openai: sampling temperature
    keywords: tuple[str, ...] = attrs.field(default=(), converter=_lower)  # matched lowercased
    priority: int = attrs.field(default=0, validator=between(-10_000, 10_000))
    guilds: tuple[str, ...] = ()  # empty: every guild
    allowed_roles: tuple[str, ...] = ()  # empty: everyone
    tts: AgentTts = attrs.field(factory=AgentTts)

    def __attrs_post_init__(self):
        if self.kind == "openai" and not self.model:
            raise Invalid("kind 'openai' needs model = \"...\"")

    def allowed_in(self, guild_id: str, roles: tuple[str, ...] | frozenset[str] = ()) -> bool:
        if self.guilds and guild_id not in self.guilds:
            return False
        return not self.allowed_roles or bool(set(self.allowed_roles) & set(roles))


@attrs.frozen
class RuleMatch:
    keywords: tuple[str, ...] = attrs.field(default=(), converter=_lower)
    regex: str = ""
    guilds: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@attrs.frozen
class Rule:
    id: str
    agents: tuple[str, ...] = attrs.field(validator=check(attrs.validators.min_len(1), "name at least one agent"))
    priority: int = 0
    match: RuleMatch = attrs.field(factory=RuleMatch)
    # the RE2 pattern of match.regex (see compile_rule_regex); computed, never read from the file
    compiled: Any = attrs.field(default=None, eq=False, repr=False, metadata={INTERNAL: True})

    def __attrs_post_init__(self):
        if self.compiled is None and self.match.regex:
            object.__setattr__(self, "compiled", _compile_regex(self.match.regex, "match", "regex"))


@attrs.frozen
class RoutingSpec:
    strategy: str = attrs.field(
        default="user_preference",
        validator=one_of(*STRATEGIES, says=f"unknown strategy {{value!r}}; known: {', '.join(STRATEGIES)}"),
    )
    default_agent: str = ""  # empty: the first agent
    history_turns: int = attrs.field(default=5, validator=between(0, 100))
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


@attrs.frozen
class _AgentsFile:
    """agents.toml as written; the references between its tables are checked here."""

    agents: tuple[AgentSpec, ...]
    routing: RoutingSpec = attrs.field(factory=RoutingSpec)
    rules: tuple[Rule, ...] = ()

    def __attrs_post_init__(self):
        ids: set[str] = set()
        for i, agent in enumerate(self.agents):
            if agent.id in ids:
                raise Invalid(f"duplicate agent id {agent.id!r}", "agents", i, "id")
            ids.add(agent.id)
        rule_ids: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.id in rule_ids:
                raise Invalid(f"duplicate rule id {rule.id!r}", "rules", i, "id")
            rule_ids.add(rule.id)
            missing = next((a for a in rule.agents if a not in ids), None)
            if missing is not None:
                raise Invalid(f"no agent with id {missing!r}", "rules", i, "agents")
        for key in ("default_agent", "classifier_agent"):
            agent_id = getattr(self.routing, key)
            if agent_id and agent_id not in ids:
                raise Invalid(f"no agent with id {agent_id!r}", "routing", key)


def _compile_regex(pattern: str, *path: str) -> Any:
    """A rule's regex, compiled by RE2 (google-re2): matching time is linear in the transcript's
    length for every pattern, so no rule can freeze routing (Python's `re` backtracks: `((a+))+$`
    on a long transcript takes minutes). RE2 has no lookarounds and no backreferences."""
    import re2

    if len(pattern) > MAX_REGEX_LEN:
        raise Invalid(f"regex longer than {MAX_REGEX_LEN} characters", *path)
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
        raise Invalid(f"invalid regex: {detail}{hint}", *path) from None
    if compiled.programsize > MAX_REGEX_PROGRAM:
        raise Invalid(
            f"regex too complex ({compiled.programsize} RE2 instructions, limit {MAX_REGEX_PROGRAM}): "
            "large counted repeats such as {200} cost that much on every transcript; simplify the pattern",
            *path,
        )
    return compiled


def compile_rule_regex(pattern: str, where: str, key: str) -> Any:
    """A rule's regex compiled by RE2 (see `_compile_regex`), or ConfigError(where, "key: reason")."""
    try:
        return _compile_regex(pattern)
    except Invalid as exc:
        raise ConfigError(where, f"{key}: {exc.reason}") from None


def _interpolate(table: dict[str, Any], env: Mapping[str, str], named: Source, path: KeyPath = ()) -> None:
    """`${VAR}` and `${VAR:-default}` in the string values of the tables and arrays of tables (not in
    lists of strings, nor in a rule's match: a regex may hold `${`), in place, before they are checked."""
    for key, value in table.items():
        here = (*path, key)
        if isinstance(value, str) and "${" in value:
            table[key] = _ENV_RE.sub(lambda m, here=here: _variable(m, env, named, here), value)
        elif isinstance(value, dict) and key != "match":
            _interpolate(value, env, named, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _interpolate(item, env, named, (*here, i))


def _variable(m: re.Match[str], env: Mapping[str, str], named: Source, path: KeyPath) -> str:
    name, default = m.group(1), m.group(2)
    if env.get(name):
        return env[name]
    if default is not None:
        return default
    raise named.error(path, f"environment variable {name} is not set (or use ${{{name}:-default}})")


def _check_layout(data: dict[str, Any], named: Source) -> None:
    """The top level: [routing], at least one [[agents]], [[rules]]; nothing else."""
    for key in data:
        if key not in ("routing", "agents", "rules"):
            where = named.where((key,))
            raise ConfigError(where, f"unknown top-level key {key!r}; expected [routing], [[agents]] and [[rules]]")
    if not isinstance(data.get("agents"), list) or not data["agents"]:
        raise ConfigError(named.name, "no agents: add at least one [[agents]] table")
    if not isinstance(data.get("rules", []), list):
        raise ConfigError(named.name, "rules: use [[rules]] tables")


def parse_agents(text: str, source: str = "agents.toml", env: Mapping[str, str] | None = None) -> AgentsConfig:
    """agents.toml's text as an AgentsConfig, or ConfigError naming `file:line`, the key and the reason."""
    env = os.environ if env is None else env
    named = Source(source, text, secrets=SECRET_KEYS)
    data = parse_toml(text, source)
    _check_layout(data, named)
    _interpolate(data, env, named)
    parsed = named.structure(data, _AgentsFile)
    routing = parsed.routing
    if not routing.default_agent:
        routing = attrs.evolve(routing, default_agent=parsed.agents[0].id)
    return AgentsConfig(
        routing=routing,
        agents=parsed.agents,
        rules=tuple(sorted(parsed.rules, key=lambda r: -r.priority)),
        source=source,
        version=hashlib.sha256(text.encode()).hexdigest()[:12],
    )


def read_agents_bytes(path: str | Path) -> bytes:
    """agents.toml's bytes; ConfigError if missing, unreadable, not a regular file or over 8 MiB."""
    return read_config_file(path, "agents file")


def load_agents(path: str | Path, env: Mapping[str, str] | None = None) -> AgentsConfig:
    try:
        text = read_agents_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    return parse_agents(text, str(path), env)
