"""The control API, served on trio by hypercorn (`voxbridge/api/server.py`: read and
keep-alive timeouts, a connection cap), 127.0.0.1:4900 by default.

    GET  /health         liveness + readiness of STT, store, Discord (200 ready, 503 not)
    GET  /status         {"status": ...}; with the bearer token: channels, speakers, turns in
                         flight, agents and circuits, config version (never URLs or secrets)
    GET  /metrics        Prometheus text
    GET  /agents         the agents (id, name, description, kind, circuit state)
    POST /voice/join     {"guild_id": "...", "channel_id": "..."}        (token)
    POST /voice/leave    {"guild_id": "..."}                             (token)
    POST /voice/speak    {"guild_id": "...", "text": "..."}              (token)
    POST /reload         re-read agents.toml                             (token)

Errors are JSON `{"error": "...", "detail": "..."}` with a 4xx status; an unexpected failure is a
500 with a generic message (the traceback goes to the log, never to the client).

Ids are validated before anything uses them (file names, log lines, Discord calls): with Discord
voice, `guild_id`/`channel_id` are snowflakes (1-20 digits); with simulated channels they match
`SIM_ID_RE` (a letter or digit, then letters, digits, `_` or `-`; at most 64). Anything else: 422.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any

import trio

from ..config import find_secret
from ..core.control import Control, ControlError
from ..net.http_server import Request, ResponseWriter
from ..ops.metrics import CONTENT_TYPE

log = logging.getLogger("voxbridge.api")

MAX_TEXT = 4000
SNOWFLAKE_RE = re.compile(r"[0-9]{1,20}")
SIM_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str = ""):
        self.status, self.error, self.detail = status, error, detail


def resolve_api_token(settings, env: dict[str, str] | None = None) -> str | None:
    return find_secret(settings.api.token_file, "VOXBRIDGE_API_TOKEN", "api-token", "[api].token_file", env)


class ControlApi:
    def __init__(
        self,
        control: Control,
        voice,
        reloader,
        *,
        token: str | None,
        readiness,
        max_body: int = 65536,
        ownership=None,
        body_timeout_s: float = 10.0,
    ):
        self.body_timeout_s = body_timeout_s  # the whole body must arrive within this
        self.ownership = ownership  # scale-out: forward /voice/speak to the guild's owner
        self.control = control
        self.voice = voice  # LocalVoice or the Discord adapter's voice backend
        self.reloader = reloader
        self.token = token
        self.readiness = readiness  # () -> dict[str, bool | None]
        self.max_body = max_body
        self.routes = {
            ("GET", "/health"): self.health,
            ("GET", "/status"): self.status,
            ("GET", "/metrics"): self.metrics_text,
            ("GET", "/agents"): self.agents,
            ("POST", "/voice/join"): self.join,
            ("POST", "/voice/leave"): self.leave,
            ("POST", "/voice/speak"): self.speak,
            ("POST", "/reload"): self.reload,
        }
        self.mutating = {"/voice/join", "/voice/leave", "/voice/speak", "/reload"}

    # --- plumbing -----------------------------------------------------------------------------
    def _authorized(self, req: Request) -> bool:
        if not self.token:
            return False
        header = req.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def _json_body(self, req: Request) -> dict[str, Any]:
        if len(req.body) > self.max_body:
            raise ApiError(413, "body_too_large", f"at most {self.max_body} bytes")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            body = json.loads(req.body or b"")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
        except RecursionError:  # "[[[[...": deeper than the parser's recursion limit
            raise ApiError(400, "malformed_json", "the body's JSON is nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        return body

    @staticmethod
    def _str(body: dict, key: str, max_len: int = 64) -> str:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # Discord ids are often sent as numbers
        if not isinstance(value, str) or not value.strip():
            raise ApiError(422, "invalid_field", f"{key!r} must be a non-empty string")
        if len(value) > max_len:
            raise ApiError(422, "invalid_field", f"{key!r} is longer than {max_len} characters")
        return value.strip()

    def _id(self, body: dict, key: str) -> str:
        """A guild or channel id: a snowflake with Discord voice, else the simulated-id pattern."""
        value = self._str(body, key)
        if getattr(self.voice, "kind", "") == "discord":
            if not SNOWFLAKE_RE.fullmatch(value):
                raise ApiError(422, "invalid_field", f"{key!r} must be a Discord id (1-20 digits)")
        elif not SIM_ID_RE.fullmatch(value):
            raise ApiError(
                422,
                "invalid_field",
                f"{key!r} must be 1-64 letters, digits, '_' or '-' (starting with a letter or digit)",
            )
        return value

    async def handle(self, req: Request, resp: ResponseWriter) -> None:
        """The API on the h11 server's interface (kept for loopback peers built on it)."""
        status, headers, data = await self.respond(req)
        await resp.start(status, headers, length=len(data))
        await resp.send(data)
        await resp.end()

    async def asgi(self, scope, receive, send) -> None:
        """The API as an ASGI app (what hypercorn serves)."""
        if scope["type"] != "http":
            return  # no lifespan or websocket here
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = bytearray()
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            body = bytearray(self.max_body + 1)  # refused below without reading it
        else:
            with trio.move_on_after(self.body_timeout_s) as waited:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    if len(body) > self.max_body or not message.get("more_body"):
                        break
            if waited.cancelled_caught:
                data = json.dumps(
                    {"error": "request_timeout", "detail": f"the body did not arrive within {self.body_timeout_s:g}s"}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 408,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": data})
                return
        target = scope.get("raw_path") or scope["path"].encode()
        path = target.decode("latin-1") + (
            "?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else ""
        )
        req = Request(method=scope["method"], path=path, headers=headers, body=bytes(body[: self.max_body + 1]))
        status, out_headers, data = await self.respond(req)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in out_headers.items()]
                + [(b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def serve(self, api_settings, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve on [api].host:port until cancelled; `task_status.started` reports the bound port."""
        from .server import AsgiServer

        self.server = AsgiServer(
            self.asgi,
            max_connections=api_settings.max_connections,
            read_timeout_s=api_settings.read_timeout_s,
            keep_alive_s=api_settings.keep_alive_s,
        )
        await self.server.serve(api_settings.host, api_settings.port, task_status=task_status)

    async def respond(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        path = req.path.split("?", 1)[0]
        try:
            if len(req.body) > self.max_body:
                raise ApiError(413, "body_too_large", f"at most {self.max_body} bytes")
            handler = self.routes.get((req.method, path))
            if handler is None:
                if any(p == path for _, p in self.routes):
                    raise ApiError(405, "method_not_allowed", f"{req.method} is not allowed on {path}")
                raise ApiError(404, "not_found", f"no endpoint {path}")
            if path in self.mutating and not self._authorized(req):
                if not self.token:
                    raise ApiError(
                        403,
                        "no_api_token_configured",
                        "set [api].token_file or $VOXBRIDGE_API_TOKEN to enable this endpoint",
                    )
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
            status, body, ctype = await handler(req)
        except ApiError as exc:
            status, body, ctype = exc.status, {"error": exc.error, "detail": exc.detail}, None
        except Exception:
            log.exception("event=api_internal_error method=%s path=%s", req.method, path)
            status, body, ctype = 500, {"error": "internal_error", "detail": "see the daemon's log"}, None
        extra = {"www-authenticate": "Bearer"} if status == 401 else {}
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), ctype or "application/json"
        else:
            data = body.encode() if isinstance(body, str) else body
        return status, {"content-type": ctype or "text/plain", **extra}, data

    # --- endpoints ------------------------------------------------------------------------------
    async def health(self, req):
        checks = await self.readiness()
        ready = all(v is not False for v in checks.values())
        return (200 if ready else 503), {"status": "ok" if ready else "not_ready", "checks": checks}, None

    async def status(self, req):
        if not self._authorized(req):
            return 200, {"status": "ok", "detail": "send the bearer token for details"}, None
        return 200, {"status": "ok", **self.control.status()}, None

    async def metrics_text(self, req):
        return 200, self.control.services.metrics.render(), CONTENT_TYPE

    async def agents(self, req):
        cfg = self.control.services.agents.current
        health = self.control.services.agents.health
        return (
            200,
            {
                "version": cfg.version,
                "default_agent": cfg.routing.default_agent,
                "strategy": cfg.routing.strategy,
                "agents": [
                    {
                        "id": a.id,
                        "name": a.name,
                        "description": a.description,
                        "kind": a.kind,
                        "circuit": health.state(a.id),
                        "guilds": list(a.guilds),
                        "allowed_roles": list(a.allowed_roles),
                    }
                    for a in cfg.agents
                ],
            },
            None,
        )

    async def join(self, req):
        body = self._json_body(req)
        guild, channel = self._id(body, "guild_id"), self._id(body, "channel_id")
        try:
            await self.voice.join(guild, channel)
        except ControlError as exc:
            raise ApiError(409, "cannot_join", str(exc)) from None
        return 200, {"joined": True, "guild_id": guild, "channel_id": channel, "voice": self.voice.kind}, None

    async def leave(self, req):
        body = self._json_body(req)
        guild = self._id(body, "guild_id")
        if self.control.channel(guild) is None:
            raise ApiError(404, "not_in_voice", f"not in a voice channel in guild {guild}")
        info = await self.voice.leave(guild)
        return 200, {"left": True, "guild_id": guild, **(info or {})}, None

    async def speak(self, req):
        body = self._json_body(req)
        guild = self._id(body, "guild_id")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(422, "invalid_field", "'text' must be a non-empty string")
        if len(text) > MAX_TEXT:
            raise ApiError(422, "invalid_field", f"'text' is longer than {MAX_TEXT} characters")
        if self.control.channel(guild) is None and self.ownership is not None:
            owner, url = await self.ownership.owner_url(guild)
            if url:  # another instance has this guild's voice: hand the request to it
                import httpx

                async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                    r = await http.post(
                        url.rstrip("/") + "/voice/speak",
                        json={"guild_id": guild, "text": text},
                        headers={"authorization": req.headers.get("authorization", "")},
                    )
                try:
                    body = r.json()
                except ValueError:
                    body = {"error": "bad_gateway", "detail": "the owning instance answered something else"}
                return r.status_code, {**body, "forwarded_to": owner}, None
        try:
            speech_id = self.control.speak(guild, text)
        except ControlError as exc:
            raise ApiError(409, "cannot_speak", str(exc)) from None
        return 202, {"queued": True, "id": speech_id}, None

    async def reload(self, req):
        holder = self.control.services.agents
        before = holder.reload_failures
        changed = await self.reloader.reload_now("api")
        if holder.reload_failures > before:
            return (
                422,
                {
                    "reloaded": False,
                    "error": "invalid_agents_file",
                    "detail": holder.last_error,
                    "serving_version": holder.current.version,
                },
                None,
            )
        return 200, {"reloaded": changed, "version": holder.current.version}, None
