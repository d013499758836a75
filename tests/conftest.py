"""Fixtures: the real models (loaded once per session), settings in a temp dir, agent servers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import attrs
import pytest
import trio

from voxbridge.config import load_settings
from voxbridge.net.http_server import serve_http
from voxbridge.stt.local import LocalWhisper
from voxbridge.tts.piper import PiperTts

from .helpers import SpeechMaker

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


PG_ADMIN_URL = os.environ.get("VOXBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VOXBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_services() -> bool:
    return bool(os.environ.get("VOXBRIDGE_REQUIRE_SERVICES"))


def service_missing(what: str, exc: Exception):
    """Skip only when the server is absent AND VOXBRIDGE_REQUIRE_SERVICES is unset; else fail."""
    message = f"{what} not reachable: {type(exc).__name__}: {exc}"
    if require_services():
        pytest.fail(message + " (VOXBRIDGE_REQUIRE_SERVICES is set)")
    pytest.skip(message)


def need_binary(name: str, package: str) -> str:
    """The path of a program a test runs (redis-server, systemd-analyze); `scripts/setup.sh --dev`
    installs it. Missing: skip, or fail when VOXBRIDGE_REQUIRE_SERVICES is set."""
    import shutil

    exe = shutil.which(name)
    if exe is None:
        message = f"{name} not installed (Debian: apt-get install {package}; scripts/setup.sh --dev does it as root)"
        if require_services():
            pytest.fail(message + " (VOXBRIDGE_REQUIRE_SERVICES is set)")
        pytest.skip(message)
    return exe


@pytest.fixture
def postgres_url():
    """A fresh, empty database on the real server for this test; dropped afterwards."""
    import uuid

    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    name = f"voxbridge_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'create database "{name}"')
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.close()


@pytest.fixture
def redis_url():
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        service_missing("Redis", exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def base_settings():
    return load_settings(env={})


@pytest.fixture(scope="session")
def piper(base_settings):
    engine = PiperTts(base_settings.tts)
    engine.voice = engine._load_sync()
    return engine


@pytest.fixture(scope="session")
def whisper_model(base_settings):
    return LocalWhisper(base_settings.stt)._load_sync()


@pytest.fixture
def stt(base_settings, whisper_model):
    """A fresh engine (own CapacityLimiter) per test around the model loaded once: a decode
    abandoned when one test's trio run ended must not hold a slot in the next test."""
    engine = LocalWhisper(base_settings.stt)
    engine.model = whisper_model
    return engine


@pytest.fixture(scope="session")
def speech(piper):
    return SpeechMaker(piper)


@pytest.fixture
def settings(tmp_path, base_settings):
    """Defaults, state in a temp dir, the repository's agents.toml."""
    return attrs.evolve(
        base_settings,
        general=attrs.evolve(base_settings.general, state_dir=str(tmp_path / "state")),
        agents=attrs.evolve(base_settings.agents, file=str(ROOT / "agents.toml")),
        # conversation mode however many speakers; addressed mode has its own tests
        conversation=attrs.evolve(base_settings.conversation, addressed_above_humans=0),
    )


@pytest.fixture
async def agent_server(nursery):
    """Start a loopback HTTP server with a handler; returns its base URL."""

    async def start(handler) -> str:
        port = await nursery.start(serve_http, handler)
        return f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of our own, so the test can kill it without touching the shared one."""
    exe = need_binary("redis-server", "redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait()
