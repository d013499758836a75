"""The JSON every agent receives (DESIGN.md §5). Built in one place so all kinds agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MAX_TEXT_CHARS = 4000  # a transcript beyond this is truncated with a marker


def build_payload(
    *,
    text: str,
    turn,
    agent_id: str,
    previous_turns: list[dict[str, Any]],
    streaming: bool,
    preferences: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS] + " […truncated]"
    return {
        "text": text,
        "userId": turn.user_id,
        "userName": turn.user_name,
        "guildId": turn.guild_id,
        "channelId": turn.channel_id,
        "conversationId": turn.conversation_id,
        "sessionId": turn.session_id,
        "agentId": agent_id,
        "turnId": turn.turn_id,
        "turnNumber": turn.number,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "useStreaming": streaming,
        "context": {
            "previousTurns": [
                {
                    "transcript": t.get("transcript") or "",
                    "response": t.get("response") or "",
                    "turnNumber": t.get("number"),
                    "agentId": t.get("agent_id"),
                }
                for t in previous_turns
            ],
            "userPreferences": preferences or {},
        },
        "stt": {"language": turn.language, "confidence": turn.confidence, "durationMs": turn.duration_ms},
    }
