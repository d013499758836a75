"""What users and operators can ask of the daemon, independent of Discord: join or leave a voice
channel, pick or clear an agent, inspect or restart a session, read the status.

Slash commands (and later the control API) are thin: parse -> a `Control` method -> reply. All
answers are plain values, with no secrets in them, so they can be shown to anyone.
"""

from __future__ import annotations

import logging
import uuid
from typing import cast

import attrs
import trio

from ..agents.config import AgentSpec
from ..errors import ControlError
from ..store import SessionRecord
from .channel import ChannelSession
from .playback import FrameSink
from .services import Services
from .speech import SpeechStream

log = logging.getLogger("voxbridge.control")


@attrs.frozen
class AgentView:
    id: str
    name: str
    description: str
    kind: str
    circuit: str


@attrs.frozen
class SessionView:
    conversation_id: str
    session_id: str
    agent_id: str | None
    agent_name: str | None
    turn_count: int


class Control:
    def __init__(self, services: Services, nursery: trio.Nursery):
        self.services = services
        self._nursery = nursery  # owned by the daemon: bounds every ChannelSession it starts
        self.channels: dict[str, ChannelSession] = {}  # one voice channel per guild (Discord's rule)

    # --- voice channels -------------------------------------------------------------------
    async def join(self, guild_id: str, channel_id: str, sink: FrameSink) -> ChannelSession:
        current = self.channels.get(guild_id)
        if current is not None and current.channel_id == channel_id:
            return current
        if current is not None:
            await self.leave(guild_id)
        channel = await self._nursery.start(ChannelSession(self.services, guild_id, channel_id, sink).run)
        self.channels[guild_id] = channel
        self.services.emit("channel_joined", guild=guild_id, channel=channel_id)
        return channel

    async def leave(self, guild_id: str) -> bool:
        channel = self.channels.pop(guild_id, None)
        if channel is None:
            return False
        channel.close()
        self.services.emit("channel_left", guild=guild_id, channel=channel.channel_id)
        await trio.lowlevel.checkpoint()
        return True

    def channel(self, guild_id: str) -> ChannelSession | None:
        return self.channels.get(guild_id)

    # --- agents -------------------------------------------------------------------------------
    def agents_for(self, guild_id: str, roles: frozenset[str] = frozenset()) -> list[AgentView]:
        cfg = self.services.agents.current
        health = self.services.agents.health
        return [
            AgentView(a.id, a.name, a.description, a.kind, health.state(a.id))
            for a in cfg.agents
            if a.allowed_in(guild_id, roles)
        ]

    def _agent(self, guild_id: str, roles: frozenset[str], name: str) -> AgentSpec:
        cfg = self.services.agents.current
        wanted = name.strip().lower()
        agent = cfg.get(wanted) or next((a for a in cfg.agents if a.name.lower() == wanted), None)
        if agent is None:
            raise ControlError(f"There is no agent called “{name}”. Use /agent list to see them.")
        if not agent.allowed_in(guild_id, roles):
            raise ControlError(f"{agent.name} is not available to you here.")
        return agent

    async def select_agent(
        self, guild_id: str, user_id: str, name: str, roles: frozenset[str] = frozenset()
    ) -> AgentView:
        agent = self._agent(guild_id, roles, name)
        await self.services.store.pin_agent(guild_id, user_id, agent.id)
        self.services.emit("agent_selected", guild=guild_id, user=user_id, agent=agent.id)
        return AgentView(
            agent.id, agent.name, agent.description, agent.kind, self.services.agents.health.state(agent.id)
        )

    async def clear_agent(self, guild_id: str, user_id: str) -> None:
        await self.services.store.pin_agent(guild_id, user_id, None)

    def agent_info(self, guild_id: str, name: str, roles: frozenset[str] = frozenset()) -> AgentView:
        a = self._agent(guild_id, roles, name)
        return AgentView(a.id, a.name, a.description, a.kind, self.services.agents.health.state(a.id))

    def complete_agent(self, guild_id: str, roles: frozenset[str], prefix: str, limit: int = 25) -> list[str]:
        """Autocomplete from the live registry: ids whose id or name starts with (or contains) `prefix`."""
        p = prefix.strip().lower()
        views = self.agents_for(guild_id, roles)
        first = [v for v in views if v.id.startswith(p) or v.name.lower().startswith(p)]
        rest = [v for v in views if v not in first and (p in v.id or p in v.name.lower())]
        return [v.id for v in first + rest][:limit]

    # --- sessions -----------------------------------------------------------------------------
    async def session_info(self, guild_id: str, user_id: str) -> SessionView:
        # cast: Store's methods are made by __getattr__ (untyped); session returns a SessionRecord
        s = cast(SessionRecord, await self.services.store.session(guild_id, user_id))
        agent = self.services.agents.current.get(s.agent_id) if s.agent_id else None
        return SessionView(s.conversation_id, s.session_id, s.agent_id, agent.name if agent else None, s.turn_count)

    async def new_session(self, guild_id: str, user_id: str) -> SessionView:
        await self.services.store.new_conversation(guild_id, user_id)
        return await self.session_info(guild_id, user_id)

    # --- the room -----------------------------------------------------------------------------
    def set_mode(self, guild_id: str, mode: str | None) -> tuple[str, str]:
        """/voxbridge mode: conversation | addressed | transcribe, or None to follow the config."""
        from .conversation import MODES

        channel = self.channels.get(guild_id)
        if channel is None:
            raise ControlError("VoxBridge is not in a voice channel here; /join first")
        if mode is not None and mode not in MODES:
            raise ControlError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)} or auto")
        channel.mode_override = mode
        self.services.emit("mode_changed", guild=guild_id, mode=mode or "auto")
        return channel.effective_mode()

    async def set_ignored(self, user_id: str, ignored: bool) -> None:
        """/voxbridge ignore-me: persisted; takes effect at once in every channel."""
        await self.services.store.set_ignored(user_id, ignored)
        if ignored:
            self.services.ignored.add(user_id)
            for channel in self.channels.values():
                if user_id in channel.speakers:
                    channel.remove_speaker(user_id)
        else:
            self.services.ignored.discard(user_id)

    # --- speaking ---------------------------------------------------------------------------
    def speak(self, guild_id: str, text: str) -> str:
        """Say `text` in the guild's voice channel (queued like an answer); returns its id."""
        channel = self.channels.get(guild_id)
        if channel is None:
            raise ControlError("VoxBridge is not in a voice channel in that guild")
        if self.services.tts is None:
            raise ControlError('speaking is disabled ([tts].backend = "none")')
        speech_id = f"speak-{uuid.uuid4().hex[:12]}"
        speech = SpeechStream(
            self.services.tts,
            channel.playback,
            speech_id,
            "api",
            lookahead=self.services.settings.tts.lookahead_clauses,
            ended_at=trio.current_time(),
            timings={},
        )
        speech.say(text)
        speech.finish_text()
        self._nursery.start_soon(speech.run_tts)
        self.services.emit("speak_queued", guild=guild_id, id=speech_id, chars=len(text))
        return speech_id

    # --- status ---------------------------------------------------------------------------
    def status(self) -> dict:
        """Channels, speakers, turns in flight, agents and their circuits, config version: no secrets."""
        holder = self.services.agents
        return {
            "channels": [
                {
                    "guild": g,
                    "channel": c.channel_id,
                    "speakers": sorted(h.info.user_name for h in c.speakers.values()),
                    "turns_in_flight": c.turns_in_flight,
                    "playback": dict(c.playback.stats),
                }
                for g, c in self.channels.items()
            ],
            "agents": [
                {
                    "id": a.id,
                    "name": a.name,
                    "kind": a.kind,
                    "circuit": holder.health.state(a.id),
                    **holder.health.stats.get(a.id, {}),
                }
                for a in holder.current.agents
            ],
            "config_version": holder.current.version,
            "reloads": holder.reloads,
            "reload_failures": holder.reload_failures,
            "counters": dict(self.services.metrics.counts()),
        }


def member_may_join(join_roles: tuple[str, ...], member_roles: frozenset[str], can_connect: bool) -> bool:
    """/join and /leave: members with one of `join_roles` (if set), else anyone who may connect."""
    if join_roles:
        return bool(set(join_roles) & member_roles)
    return can_connect
