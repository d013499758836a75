#!/usr/bin/env python3
"""First byte and full answer from a real n8n 1.123.0: VoxBridge's agent client vs bare httpx.

Starts n8n (installed by scripts/install_n8n.sh) on a free loopback port with the tests'
workflows (tests/n8n/*.json), then, round after round, calls each webhook with
`call_agent` (decoding gzip, parsing, first byte = first piece of the answer) and with a bare
`httpx` POST of the same bytes and headers (first byte = first body chunk off the wire, whole
body read, nothing parsed). Also reports n8n's start: launch -> /healthz 200 -> first webhook
200 (the "not registered" 404 window). Prints a table, writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxbridge.agents.client import build_request, call_agent, make_http_client  # noqa: E402
from voxbridge.agents.config import AgentSpec  # noqa: E402
from voxbridge.sim.n8n_local import LocalN8n  # noqa: E402

WEBHOOKS = {
    "vbx-stream": "streaming, 1 Respond node",
    "vbx-json": "JSON (Respond to Webhook)",
    "vbx-wait": "streaming, Respond + Wait 1 s + Respond",
}
PAYLOAD = {"text": "what time is it", "turnNumber": 3, "agentId": "general", "userName": "alice", "useStreaming": True}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def voxbridge_once(http, spec: AgentSpec) -> tuple[float, float]:
    async def ignore(_t):
        return None

    started = time.perf_counter()
    answer = await call_agent(spec, PAYLOAD, http, ignore)
    return answer.first_byte_s, time.perf_counter() - started


async def bare_once(http, spec: AgentSpec) -> tuple[float, float]:
    body, headers = build_request(spec, PAYLOAD)  # the same bytes and headers (gzip accepted)
    t0 = time.perf_counter()
    first = None
    async with http.stream("POST", spec.url, content=body, headers=headers) as resp:
        async for chunk in resp.aiter_raw():
            if chunk and first is None:
                first = time.perf_counter() - t0
    resp.raise_for_status()
    return first, time.perf_counter() - t0


async def bench(n8n: LocalN8n, rounds: int, warmup: int) -> list[dict]:
    samples = {
        (hook, variant): {"first": [], "total": []} for hook in WEBHOOKS for variant in ("voxbridge", "bare httpx")
    }
    async with make_http_client() as http:
        for r in range(warmup + rounds):
            for hook in WEBHOOKS:  # interleaved: both variants see the same n8n state
                spec = AgentSpec(id="general", name="General", kind="n8n", url=n8n.webhook(hook), retries=0)
                for variant, fn in (("voxbridge", voxbridge_once), ("bare httpx", bare_once)):
                    first, total = await fn(http, spec)
                    if r >= warmup:
                        samples[(hook, variant)]["first"].append(first * 1000)
                        samples[(hook, variant)]["total"].append(total * 1000)
    rows = []
    for (hook, variant), s in samples.items():
        bare = samples[(hook, "bare httpx")]
        rows.append(
            {
                "webhook": hook,
                "workflow": WEBHOOKS[hook],
                "variant": variant,
                "n": len(s["first"]),
                "first_byte_p50_ms": statistics.median(s["first"]),
                "first_byte_p95_ms": pct(s["first"], 0.95),
                "full_answer_p50_ms": statistics.median(s["total"]),
                "full_answer_p95_ms": pct(s["total"], 0.95),
                "first_byte_p50_ratio": statistics.median(s["first"]) / statistics.median(bare["first"]),
                "full_answer_p50_ratio": statistics.median(s["total"]) / statistics.median(bare["total"]),
            }
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="bench-out/bench_agents.json")
    args = p.parse_args()
    workflows = sorted((ROOT / "tests" / "n8n").glob("*.json"))
    with tempfile.TemporaryDirectory(prefix="vbx-n8n-") as tmp:
        n8n = LocalN8n(Path(tmp), workflows)
        n8n.import_and_activate()
        with n8n:
            n8n.start("vbx-json")
            rows = trio.run(bench, n8n, args.rounds, args.warmup)
    start = {
        "healthz_s": n8n.healthz_s,
        "first_webhook_200_s": n8n.start_s,
        "not_registered_window_s": n8n.start_s - n8n.healthz_s,
        "not_ready_answers_seen": n8n.not_ready_answers,
    }
    print(
        f"n8n 1.123.0 start: /healthz 200 after {start['healthz_s']:.1f} s, first webhook 200 after "
        f"{start['first_webhook_200_s']:.1f} s "
        f"({start['not_registered_window_s']:.1f} s of 'starting up' / 404 answers)\n"
    )
    header = (
        f"{'webhook':<11} {'variant':<11} {'n':>3} {'first p50':>9} {'p95':>7} {'full p50':>9} {'p95':>7} "
        f"{'first/bare':>10} {'full/bare':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['webhook']:<11} {r['variant']:<11} {r['n']:>3} "
            f"{r['first_byte_p50_ms']:>9.1f} {r['first_byte_p95_ms']:>7.1f} "
            f"{r['full_answer_p50_ms']:>9.1f} {r['full_answer_p95_ms']:>7.1f} {r['first_byte_p50_ratio']:>10.2f} "
            f"{r['full_answer_p50_ratio']:>9.2f}"
        )
    print("\nms; voxbridge first byte = first piece of the answer (decoded, parsed); bare httpx first byte = first")
    print("body chunk on the wire (the gzip header for streams). Same request bytes and headers in both.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n8n": "1.123.0", "rounds": args.rounds, "start": start, "rows": rows}, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
