#!/usr/bin/env python3
"""Attack: thousands of half-sent requests against the daemon's control API.

Starts the real daemon (`voxbridge run --no-discord`, loopback API) in a child process whose
descriptor limit is systemd's default soft limit (1024), then opens N connections (20,000 by
default) that each send a request line and some headers but never the blank line that ends them.
Every `--health-every` connections it asks `GET /health` on a fresh connection and counts the
daemon's open descriptors (/proc/PID/fd). Afterwards it waits for the API's keep-alive timeout
and counts how many of the attack connections the daemon closed by itself.

Held means: every /health probe answered 200, the daemon never came near its descriptor limit,
and it is still alive. Bounded: N connections, `--time-limit` seconds, loopback only; the
client keeps at most (its own hard descriptor limit - 256) sockets open (it closes its oldest).

  .venv/bin/python scripts/attack_connections.py                  # 20,000 connections
  .venv/bin/python scripts/attack_connections.py --connections 2000

Prints a table and writes bench-out/attack_connections.json. `idle_connections_scenario()` is
what scripts/attack.py (and tests/test_hostile_api.py, smaller) call.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
HALF_SENT = (
    b"POST /voice/join HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 40\r\n"
)  # no blank line: the headers never end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _probe_health(port: int, timeout: float) -> float | None:
    """Seconds until a 200 from GET /health on a fresh connection, or None."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(0.1, timeout - (time.monotonic() - t0)))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = s.recv(64)
    except OSError:
        return None
    return time.monotonic() - t0 if data.startswith(b"HTTP/1.1 200") else None


def _start_daemon(work: Path, port: int, nofile: int, env_extra: dict[str, str]) -> subprocess.Popen:
    (work / "agents.toml").write_text(
        '[[agents]]\nid = "general"\nkind = "n8n"\nurl = "http://127.0.0.1:9/webhook/x"\n'
    )
    env = {
        **os.environ,
        "VOXBRIDGE_API__PORT": str(port),
        "VOXBRIDGE_STORE__URL": f"sqlite:///{work}/v.db",
        "VOXBRIDGE_TTS__BACKEND": "none",
        **env_extra,
    }
    env.pop("VOXBRIDGE_API_TOKEN", None)

    def limit():  # in the child: systemd's default soft limit unless told otherwise
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    log = open(work / "daemon.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "voxbridge", "run", "--no-discord"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=limit,
    )


def _run(
    connections: int,
    daemon_nofile: int,
    health_every: int,
    time_limit_s: float,
    wait_close_s: float,
    env_extra: dict[str, str],
) -> dict:
    client_limit = raise_nofile_limit()
    keep_open = max(64, client_limit - 256)
    result: dict = {
        "scenario": "idle_connections",
        "connections": connections,
        "daemon_nofile": daemon_nofile,
        "client_nofile": client_limit,
    }
    with tempfile.TemporaryDirectory(prefix="vbx-attack-") as tmp:
        work = Path(tmp)
        port = _free_port()
        daemon = _start_daemon(work, port, daemon_nofile, env_extra)
        socks: collections.deque[socket.socket] = collections.deque()
        try:
            deadline = time.monotonic() + 120
            while _probe_health(port, 1.0) is None:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start:\n" + (work / "daemon.log").read_text()[-3000:])
                time.sleep(0.2)
            base_fds = _fd_count(daemon.pid)
            probes, fds, opened, refused = [], [base_fds], 0, 0
            t0 = time.monotonic()
            for i in range(connections):
                if time.monotonic() - t0 > time_limit_s:
                    break
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=1.0)
                    s.sendall(HALF_SENT)
                    socks.append(s)
                    opened += 1
                except OSError:
                    refused += 1
                while len(socks) > keep_open:
                    socks.popleft().close()
                if (i + 1) % health_every == 0:
                    probes.append(_probe_health(port, 5.0))
                    fds.append(_fd_count(daemon.pid))
            flood_s = time.monotonic() - t0
            probes.append(_probe_health(port, 5.0))
            fds.append(_fd_count(daemon.pid))
            # How many attack connections does the daemon close by itself (keep-alive / read timeout)?
            closed, still = 0, list(socks)
            end = time.monotonic() + wait_close_s
            for s in still:
                s.settimeout(max(0.0, end - time.monotonic()) or 0.001)
                try:
                    while s.recv(4096):  # a 4xx answer, if any, then EOF
                        pass
                    closed += 1
                except TimeoutError:
                    pass
                except OSError:
                    closed += 1  # reset by the daemon
            probes.append(_probe_health(port, 5.0))
            fds.append(_fd_count(daemon.pid))
            alive = daemon.poll() is None
        finally:
            for s in socks:
                s.close()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        answered = [p for p in probes if p is not None]
        result.update(
            {
                "opened": opened,
                "connect_failed": refused,
                "flood_s": round(flood_s, 2),
                "health_probes": len(probes),
                "health_ok": len(answered),
                "health_max_ms": round(max(answered) * 1000, 1) if answered else None,
                "health_median_ms": round(sorted(answered)[len(answered) // 2] * 1000, 1) if answered else None,
                "daemon_fds_base": base_fds,
                "daemon_fds_peak": max(fds),
                "closed_by_daemon": closed,
                "left_open_after_s": wait_close_s,
                "still_open": len(still) - closed,
                "daemon_alive": alive,
            }
        )
        result["held"] = bool(alive and len(answered) == len(probes) and 0 < max(fds) < daemon_nofile - 16)
    return result


async def idle_connections_scenario(
    connections: int = 20_000,
    *,
    daemon_nofile: int = 1024,
    health_every: int = 1000,
    time_limit_s: float = 120.0,
    wait_close_s: float = 10.0,
    env_extra: dict[str, str] | None = None,
) -> dict:
    """Run the attack (blocking sockets, in a worker thread); see the module docstring."""
    return await trio.to_thread.run_sync(
        functools.partial(_run, connections, daemon_nofile, health_every, time_limit_s, wait_close_s, env_extra or {})
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=20_000)
    ap.add_argument(
        "--daemon-nofile", type=int, default=1024, help="the daemon's soft RLIMIT_NOFILE (systemd's default: 1024)"
    )
    ap.add_argument("--health-every", type=int, default=1000)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "attack_connections.json"))
    args = ap.parse_args()
    result = trio.run(
        functools.partial(
            idle_connections_scenario,
            args.connections,
            daemon_nofile=args.daemon_nofile,
            health_every=args.health_every,
            time_limit_s=args.time_limit,
        )
    )
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print("HELD" if result["held"] else "BROKE")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
