"""`agents.toml`: which agents exist and how turns reach them.

Loading validates everything and reports `file:line: key: reason`. `${VAR}` and
`${VAR:-default}` are interpolated from the environment in string values; the resolved URLs and
headers are secrets and never appear in reprs, logs or errors (see `redact_url`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..errors import ConfigError, toml_error_where

AGENT_KINDS = ("n8n", "webhook")
STRATEGIES = ("user_preference",)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def redact_url(url: str) -> str:
    """scheme://host:port/… — enough to tell endpoints apart, never a path key or credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}/…"
    except ValueError:
        return "<invalid url>"


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
    headers: dict[str, str] = attrs.field(factory=dict, repr=lambda h: f"<{len(h)} headers>")


@attrs.frozen
class RoutingSpec:
    strategy: str = "user_preference"
    default_agent: str = ""
    history_turns: int = 5


@attrs.frozen
class AgentsConfig:
    routing: RoutingSpec
    agents: tuple[AgentSpec, ...]
    source: str = ""
    version: str = ""  # hash of the file's text: tells reloads apart

    def get(self, agent_id: str) -> AgentSpec | None:
        return next((a for a in self.agents if a.id == agent_id), None)

    def with_urls(self, urls: dict[str, str]) -> AgentsConfig:
        """A copy with some agents pointed elsewhere (the simulator's demo agents)."""
        agents = tuple(attrs.evolve(a, url=urls.get(a.id, a.url)) for a in self.agents)
        return attrs.evolve(self, agents=agents)


AGENT_FIELDS = {f.name: f for f in attrs.fields(AgentSpec)}
_TYPES = {name: {"str": str, "bool": bool, "float": float, "int": int, "dict[str, str]": dict}[str(f.type)]
          for name, f in {**AGENT_FIELDS, **{f.name: f for f in attrs.fields(RoutingSpec)}}.items()}
ROUTING_FIELDS = {f.name: f for f in attrs.fields(RoutingSpec)}


class _Locator:
    """Finds the line of `key` inside the n-th `[[agents]]` block or the `[routing]` table."""

    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source

    def where(self, table: str, index: int | None = None, key: str | None = None) -> str:
        header_re = re.compile(r"^\s*\[\[\s*" + re.escape(table) + r"\s*\]\]" if index is not None else r"^\s*\[\s*" + re.escape(table) + r"\s*\]")
        count, line_no = -1, None
        for i, line in enumerate(self.lines, 1):
            if header_re.match(line):
                count += 1
                if index is None or count == index:
                    line_no = i
                    break
        if line_no is None:
            return self.source
        if key:
            for j in range(line_no, len(self.lines)):
                line = self.lines[j]
                if re.match(r"^\s*\[", line):
                    break
                if re.match(r"^\s*" + re.escape(key) + r"\s*=", line):
                    return f"{self.source}:{j + 1}"
        return f"{self.source}:{line_no}"


def _interpolate(value: str, env: dict[str, str], where: str, key: str) -> str:
    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(where, f"{key}: environment variable {name} is not set (or use ${{{name}:-default}})")

    return _ENV_RE.sub(sub, value)


def _check_type(value: Any, field: attrs.Attribute, where: str, key: str) -> Any:
    expected = _TYPES[field.name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(where, f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}"[:200])
    return value


def parse_agents(text: str, source: str = "agents.toml", env: dict[str, str] | None = None) -> AgentsConfig:
    env = dict(os.environ) if env is None else env
    loc = _Locator(text, source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_error_where(source, exc), f"invalid TOML: {exc}") from None
    for key in data:
        if key not in ("routing", "agents"):
            raise ConfigError(loc.where(key) if isinstance(data[key], dict) else source, f"unknown top-level key {key!r}; expected [routing] and [[agents]]")
    routing_raw = data.get("routing", {})
    if not isinstance(routing_raw, dict):
        raise ConfigError(source, "routing: must be a table [routing]")
    kwargs = {}
    for key, value in routing_raw.items():
        where = loc.where("routing", None, key)
        if key not in ROUTING_FIELDS:
            raise ConfigError(where, f"routing.{key}: unknown key; known: {', '.join(ROUTING_FIELDS)}")
        kwargs[key] = _check_type(value, ROUTING_FIELDS[key], where, f"routing.{key}")
    routing = RoutingSpec(**kwargs)
    if routing.strategy not in STRATEGIES:
        raise ConfigError(loc.where("routing", None, "strategy"), f"routing.strategy: unknown strategy {routing.strategy!r}; known: {', '.join(STRATEGIES)}")
    if not 0 <= routing.history_turns <= 100:
        raise ConfigError(loc.where("routing", None, "history_turns"), "routing.history_turns: must be between 0 and 100")

    agents_raw = data.get("agents", [])
    if not isinstance(agents_raw, list) or not agents_raw:
        raise ConfigError(source, "no agents: add at least one [[agents]] table")
    agents: list[AgentSpec] = []
    for i, raw in enumerate(agents_raw):
        block = loc.where("agents", i)
        kwargs = {}
        for key, value in raw.items():
            where = loc.where("agents", i, key)
            if key not in AGENT_FIELDS:
                raise ConfigError(where, f"agents[{i}].{key}: unknown key; known: {', '.join(AGENT_FIELDS)}")
            value = _check_type(value, AGENT_FIELDS[key], where, f"agents[{i}].{key}")
            if isinstance(value, str):
                value = _interpolate(value, env, where, f"agents[{i}].{key}")
            if key == "headers":
                value = {str(k): _interpolate(str(v), env, where, f"agents[{i}].headers.{k}") for k, v in value.items()}
            kwargs[key] = value
        for required in ("id", "kind", "url"):
            if required not in kwargs:
                raise ConfigError(block, f"agents[{i}]: missing required key {required!r}")
        agent_id = kwargs["id"]
        if not _ID_RE.match(agent_id):
            raise ConfigError(loc.where("agents", i, "id"), f"agents[{i}].id: {agent_id!r} must be lowercase letters, digits, '-' or '_' (max 64)")
        if any(a.id == agent_id for a in agents):
            raise ConfigError(loc.where("agents", i, "id"), f"agents[{i}].id: duplicate agent id {agent_id!r}")
        if kwargs["kind"] not in AGENT_KINDS:
            raise ConfigError(loc.where("agents", i, "kind"), f"agents[{i}].kind: unknown kind {kwargs['kind']!r}; known: {', '.join(AGENT_KINDS)}")
        url = kwargs["url"]
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(loc.where("agents", i, "url"), f"agents[{i}].url: not an http(s) URL ({redact_url(url)})")
        for key in ("timeout_s", "total_timeout_s", "connect_timeout_s"):
            if key in kwargs and not 0 < kwargs[key] <= 3600:
                raise ConfigError(loc.where("agents", i, key), f"agents[{i}].{key}: must be between 0 and 3600 seconds")
        if not 0 <= kwargs.get("retries", 0) <= 10:
            raise ConfigError(loc.where("agents", i, "retries"), f"agents[{i}].retries: must be between 0 and 10")
        if not 1024 <= kwargs.get("max_response_bytes", 1 << 20) <= 1 << 30:
            raise ConfigError(loc.where("agents", i, "max_response_bytes"), f"agents[{i}].max_response_bytes: must be between 1 KiB and 1 GiB")
        kwargs.setdefault("name", agent_id)
        agents.append(AgentSpec(**kwargs))
    if not routing.default_agent:
        routing = attrs.evolve(routing, default_agent=agents[0].id)
    elif not any(a.id == routing.default_agent for a in agents):
        raise ConfigError(loc.where("routing", None, "default_agent"), f"routing.default_agent: no agent with id {routing.default_agent!r}")
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return AgentsConfig(routing=routing, agents=tuple(agents), source=source, version=version)


def load_agents(path: str | Path, env: dict[str, str] | None = None) -> AgentsConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read agents file: {exc.strerror}") from None
    return parse_agents(text, str(path), env)
