"""Remote speech services against real peers: wyoming-faster-whisper (bundled tiny.en),
wyoming-piper (bundled voice), our own stt-serve; OpenAI-compatible endpoints on loopback."""

import email.parser
import email.policy
import shutil
import socket
import subprocess
import sys
import time

import attrs
import pytest
import trio
import trio.lowlevel

from voxbridge.audio import STT_RATE
from voxbridge.audio.convert import float_to_pcm16, resample
from voxbridge.config import load_settings
from voxbridge.errors import ConfigError
from voxbridge.stt.local import bundled_model_path
from voxbridge.stt.remote import OpenAiStt, WebsocketStt, WyomingStt
from voxbridge.tts.piper import bundled_voice_path
from voxbridge.tts.remote import OpenAiTts, WyomingTts

from .helpers import wer

TEXT = "Please tell me a short story about a friendly dragon."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port, timeout=120):
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not listen within {timeout}s")


@pytest.fixture(scope="module")
def wyoming_whisper(tmp_path_factory):
    port = free_port()
    proc = start_server(
        [
            "wyoming_faster_whisper",
            "--uri",
            f"tcp://127.0.0.1:{port}",
            "--model",
            str(bundled_model_path()),
            "--data-dir",
            str(tmp_path_factory.mktemp("wfw")),
            "--language",
            "en",
            "--local-files-only",
        ],
        port,
    )
    yield f"tcp://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def wyoming_piper(tmp_path_factory):
    data = tmp_path_factory.mktemp("wpiper")
    voice = bundled_voice_path()
    shutil.copy(voice, data / voice.name)
    shutil.copy(str(voice) + ".json", data / (voice.name + ".json"))
    port = free_port()
    proc = start_server(
        [
            "wyoming_piper",
            "--voice",
            voice.stem,
            "--uri",
            f"tcp://127.0.0.1:{port}",
            "--data-dir",
            str(data),
            "--download-dir",
            str(data),
        ],
        port,
    )
    yield f"tcp://127.0.0.1:{port}", voice.stem
    proc.kill()
    proc.wait()


def stt_settings(backend, endpoints, **kw):
    s = load_settings(env={})
    return attrs.evolve(s.stt, backend=backend, endpoints=tuple(endpoints), **kw)


def tts_settings(backend, endpoints, **kw):
    s = load_settings(env={})
    return attrs.evolve(s.tts, backend=backend, endpoints=tuple(endpoints), **kw)


async def test_wyoming_stt_against_wyoming_faster_whisper(wyoming_whisper, speech):
    engine = WyomingStt(stt_settings("wyoming", [wyoming_whisper]))
    tr = await engine.transcribe(speech.pcm16k(TEXT))
    assert wer(TEXT, tr.text) <= 0.25, tr.text


async def test_wyoming_tts_against_wyoming_piper(wyoming_piper, stt):
    uri, voice = wyoming_piper
    engine = WyomingTts(tts_settings("wyoming", [uri], remote_voice=voice))
    sp = await engine.synthesize(TEXT)
    assert sp.rate == 22050 and len(sp.audio) / sp.rate > 2
    heard = await stt.transcribe(resample(sp.audio, sp.rate, STT_RATE))
    assert wer(TEXT, heard.text) <= 0.25, heard.text


async def test_failover_past_a_dead_endpoint(wyoming_whisper, speech):
    dead = f"tcp://127.0.0.1:{free_port()}"
    engine = WyomingStt(stt_settings("wyoming", [dead, wyoming_whisper]))
    tr = await engine.transcribe(speech.pcm16k(TEXT))
    assert wer(TEXT, tr.text) <= 0.25
    assert engine.pool.failures[dead] == 1 and engine.pool.ranked()[0] == wyoming_whisper  # the dead one cools down


async def test_stt_serve_over_websocket_and_wyoming_with_load_report(stt, speech, nursery):
    from voxbridge.stt.serve import serve

    server, ports = await nursery.start(
        lambda task_status: serve(load_settings(env={}), ws_port=0, wyoming_port=0, engine=stt, task_status=task_status)
    )
    ws_engine = WebsocketStt(stt_settings("websocket", [f"ws://127.0.0.1:{ports['websocket']}"]))
    wy_engine = WyomingStt(stt_settings("wyoming", [f"tcp://127.0.0.1:{ports['wyoming']}"]))
    texts = ["What time is it in Tokyo?", "How far away is the moon?", TEXT]
    results = {}

    async def one(engine, text):
        results[(engine.name, text)] = (await engine.transcribe(speech.pcm16k(text))).text

    async with trio.open_nursery() as n:  # several clients at once share the engine's workers
        for text in texts:
            n.start_soon(one, ws_engine, text)
            n.start_soon(one, wy_engine, text)
    assert all(wer(text, results[(kind, text)]) <= 0.25 for (kind, text) in results)
    import json

    from trio_websocket import open_websocket_url

    async with open_websocket_url(f"ws://127.0.0.1:{ports['websocket']}") as ws:
        await ws.send_message(json.dumps({"type": "status"}))
        status = json.loads(await ws.get_message())
    assert status["served"] == 6 and status["in_flight"] == 0 and status["workers"] == 2 and status["errors"] == 0


async def test_openai_compatible_stt_and_tts(stt, piper, agent_server, monkeypatch):
    monkeypatch.setenv("VBX_TEST_OPENAI_KEY", "sk-test-123")
    seen = {}

    async def handler(req, resp):
        seen.setdefault(req.path, []).append(req.headers.get("authorization"))
        if req.path == "/v1/audio/transcriptions":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"content-type: " + req.headers["content-type"].encode() + b"\r\n\r\n" + req.body
            )
            parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            import io

            from voxbridge.audio.wav import read_wav_mono

            audio, rate = read_wav_mono(io.BytesIO(parts["file"].get_payload(decode=True)))
            assert parts["model"].get_content().strip() == "whisper-1"
            prompt = parts["prompt"].get_content().strip() if "prompt" in parts else None
            seen.setdefault("prompts", []).append(prompt)
            tr = await stt.transcribe(resample(audio, rate, STT_RATE), prompt=prompt)
            await resp.respond(200, {"text": tr.text})
        elif req.path == "/v1/audio/speech":
            body = req.json()
            sp = piper.synthesize_sync(body["input"])
            pcm = float_to_pcm16(resample(sp.audio, sp.rate, 24000)).tobytes()
            if body.get("voice") == "wav-server":  # like Chatterbox: always WAV
                import io
                import wave

                buf = io.BytesIO()
                with wave.open(buf, "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(24000)
                    w.writeframes(pcm)
                await resp.respond(200, buf.getvalue(), "audio/wav")
            else:
                await resp.respond(200, pcm, "audio/pcm")
        else:
            await resp.respond(404, {"error": "no"})

    url = await agent_server(handler)
    stt_engine = OpenAiStt(stt_settings("openai", [url], api_key_env="VBX_TEST_OPENAI_KEY"))
    from .helpers import SpeechMaker

    tr = await stt_engine.transcribe(SpeechMaker(piper).pcm16k(TEXT))
    assert wer(TEXT, tr.text) <= 0.25
    # Addressed mode's name prompt goes out as OpenAI's `prompt` field (before: never sent).
    tr = await stt_engine.transcribe(SpeechMaker(piper).pcm16k("VoxBridge, what time is it?"), prompt="VoxBridge.")
    assert seen["prompts"] == [None, "VoxBridge."] and tr.text.lower().startswith("voxbridge"), tr
    for voice in ("alloy", "wav-server"):
        tts_engine = OpenAiTts(tts_settings("openai", [url], api_key_env="VBX_TEST_OPENAI_KEY", remote_voice=voice))
        sp = await tts_engine.synthesize("How far away is the moon?")
        assert sp.rate == 24000
        heard = await stt.transcribe(resample(sp.audio, sp.rate, STT_RATE))
        assert wer("How far away is the moon?", heard.text) <= 0.25
    assert (
        set(seen["/v1/audio/speech"]) == {"Bearer sk-test-123"}
        and seen["/v1/audio/transcriptions"] == ["Bearer sk-test-123"] * 2
    )
    await stt_engine.aclose()


def test_remote_backends_need_matching_endpoints(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text('[stt]\nbackend = "wyoming"\n')
    with pytest.raises(ConfigError, match=r"\[stt\].endpoints.*needs at least one endpoint"):
        load_settings(path, env={})
    path.write_text('[tts]\nbackend = "openai"\nendpoints = ["tcp://h:1"]\n')
    with pytest.raises(ConfigError, match=r"takes http://"):
        load_settings(path, env={})


async def test_least_outstanding_balancing():
    from voxbridge.net.endpoints import EndpointPool

    pool = EndpointPool(["a", "b", "c"])
    picked = []

    async def work(endpoint):
        picked.append(endpoint)
        await trio.sleep(0.05)
        return endpoint

    async with trio.open_nursery() as n:
        for _ in range(6):
            n.start_soon(pool.call, work, (OSError,))
            await trio.lowlevel.checkpoint()  # let each call take its endpoint before the next picks
    assert sorted(picked) == ["a", "a", "b", "b", "c", "c"]
    assert all(v == 0 for v in pool.outstanding.values())


async def test_stt_serve_batches_concurrent_clients_correctly(stt, speech, nursery):
    import json

    from trio_websocket import open_websocket_url

    from voxbridge.stt.serve import serve

    server, ports = await nursery.start(
        lambda task_status: serve(
            load_settings(env={}), ws_port=0, wyoming_port=None, engine=stt, batch=True, task_status=task_status
        )
    )
    engine = WebsocketStt(stt_settings("websocket", [f"ws://127.0.0.1:{ports['websocket']}"]))
    texts = [
        "What time is it in Tokyo?",
        "How far away is the moon?",
        TEXT,
        "Turn on the kitchen lights.",
        "Add milk to my shopping list.",
        "Tell me a joke about computers.",
    ]
    got = {}

    async def one(text):
        got[text] = (await engine.transcribe(speech.pcm16k(text))).text

    async with trio.open_nursery() as n:
        for text in texts:
            n.start_soon(one, text)
    # Batching must not cost accuracy: compare with the same clips decoded one by one. (Per clip,
    # int8 numerics vary with the batch, so a short clip may flip a word either way.)
    plain = {t: (await stt.transcribe(speech.pcm16k(t))).text for t in texts}
    batched_wer = sum(wer(t, got[t]) for t in texts) / len(texts)
    plain_wer = sum(wer(t, plain[t]) for t in texts) / len(texts)
    assert batched_wer <= plain_wer + 0.06 and batched_wer <= 0.15, (got, plain)
    assert all(wer(t, got[t]) <= 0.34 for t in texts), got  # at most two words off in a short sentence
    async with open_websocket_url(f"ws://127.0.0.1:{ports['websocket']}") as ws:
        await ws.send_message(json.dumps({"type": "status"}))
        status = json.loads(await ws.get_message())
    assert status["batching"]["batched_requests"] == 6 and status["batching"]["largest_batch"] > 1


async def test_open_services_closes_the_remote_tts_it_created(settings, stt, tmp_path):
    """The daemon's services own the TTS engine they create: an OpenAI-compatible one holds an
    HTTP client (and its connections), closed with the services (before: never closed)."""
    from voxbridge.core.services import open_services

    s = attrs.evolve(settings, tts=tts_settings("openai", ["http://127.0.0.1:9/v1"]))
    async with open_services(s, stt=stt, tts=True, store_url=f"sqlite:///{tmp_path}/t.db") as services:
        tts = services.tts
        assert isinstance(tts, OpenAiTts) and not tts.http.is_closed
    assert tts.http.is_closed
