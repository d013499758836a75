"""n8n-compatible streaming webhooks on loopback, for `voxbridge simulate --demo-agents`.

Each agent answers POST /webhook/<agent_id> the way n8n 1.123 does with an AI Agent node in
streaming mode: status 200, `application/json`, chunked, one `begin`, an `item` per token,
one `end` (see shared/fixtures/n8n). The answer is derived from the question, so a run is
reproducible and a test can check that what was spoken is what the agent said.
"""

from __future__ import annotations

import json
import re
import time

import trio

from ..net.http_server import Request, ResponseWriter, serve_http


def demo_answer(agent_id: str, question: str) -> str:
    """Deterministic: the question comes back, plus a short second sentence."""
    q = re.sub(r"[^\w\s']", "", question).strip().lower() or "nothing"
    words = q.split()
    if len(words) > 12:
        q = " ".join(words[:12])
    return f"You asked {q}. The {agent_id} agent says hello."


class DemoAgents:
    def __init__(self, token_delay_s: float = 0.01):
        self.token_delay_s = token_delay_s
        self.port: int | None = None
        self.calls: list[dict] = []

    def url(self, agent_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/{agent_id}"

    def answer_for(self, cfg):
        """`cfg` with every agent pointed at this server (usable as a reload transform)."""
        return cfg.with_urls({a.id: self.url(a.id) for a in cfg.agents})

    async def handle(self, req: Request, resp: ResponseWriter) -> None:
        m = re.fullmatch(r"/webhook/([\w-]+)", req.path)
        if req.method != "POST" or not m:
            await resp.respond(404, {"code": 404, "message": "The requested webhook is not registered."})
            return
        try:
            payload = req.json()
            question = str(payload["text"])
        except (ValueError, KeyError, TypeError):
            await resp.respond(422, {"message": "expected a JSON body with 'text'"})
            return
        agent_id = m.group(1)
        self.calls.append({"agent": agent_id, "payload": payload})
        answer = demo_answer(agent_id, question)
        meta = {"nodeId": "demo", "nodeName": f"Demo {agent_id}", "itemIndex": 0, "runIndex": 0}

        def line(kind: str, content: str | None = None) -> bytes:
            obj: dict[str, object] = {"type": kind}
            if content is not None:
                obj["content"] = content
            obj["metadata"] = {**meta, "timestamp": int(time.time() * 1000)}
            return (json.dumps(obj) + "\n").encode()

        await resp.start(200, {"content-type": "application/json; charset=utf-8", "cache-control": "no-cache"})
        await resp.send(line("begin"))
        for token in re.findall(r"\S+\s*", answer):
            await trio.sleep(self.token_delay_s)
            await resp.send(line("item", token))
        await resp.send(line("end"))
        await resp.end()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:  # bounds the demo server's lifetime
            self.port = await nursery.start(serve_http, self.handle)
            task_status.started(self.port)
