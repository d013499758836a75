"""One exception hierarchy for everything a user can get wrong or a peer can break.

Messages say what, where (file:line or config key) and how to fix; they never carry secrets.
"""


class VoxBridgeError(Exception):
    """Base of every error VoxBridge raises on purpose."""


def toml_error_where(source: str, exc: Exception) -> str:
    """`file:line` for a tomllib error (3.11 has the line only in the message)."""
    import re

    m = re.search(r"line (\d+)", str(exc))
    return f"{source}:{m.group(1)}" if m else source


class ConfigError(VoxBridgeError):
    """A setting or file is invalid. `where` is a key path or `file:line`."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class SttError(VoxBridgeError):
    """Transcription of one utterance failed (only that turn fails)."""


class TtsError(VoxBridgeError):
    """Synthesis of one clause failed."""


class AgentError(VoxBridgeError):
    """An agent call failed after retries. `reason` is a short, secret-free slug."""

    def __init__(self, agent_id: str, reason: str, detail: str = ""):
        self.agent_id = agent_id
        self.reason = reason
        self.detail = detail
        super().__init__(f"agent {agent_id!r}: {reason}" + (f" ({detail})" if detail else ""))


class ControlError(Exception):
    """A request that cannot be done, with a message fit for the user who asked."""
