"""Remote speech on a bad day (issue 14, items 11-15), against real peers on loopback:
wyoming-faster-whisper, wyoming-piper, our stt-serve, an OpenAI-compatible server we host;
plus the faults: a server that accepts and never answers, one whose listen queue is full (SYNs
dropped), a websocket server that rejects the handshake."""

import functools
import json
import socket

import attrs
import numpy as np
import pytest
import trio

from voxbridge.audio import STT_RATE
from voxbridge.audio.convert import float_to_pcm16, pcm16_to_float, resample
from voxbridge.audio.wav import write_wav
from voxbridge.config import load_settings
from voxbridge.errors import SttError
from voxbridge.net.endpoints import EndpointPool
from voxbridge.net.wyoming import WyomingConnection
from voxbridge.stt.remote import WebsocketStt, WyomingStt
from voxbridge.tts.remote import OpenAiTts, WyomingTts

from . import test_remote_speech as remote
from .helpers import wer
from .test_remote_speech import TEXT, stt_settings, tts_settings

wyoming_whisper = remote.wyoming_whisper  # the real servers, started as test_remote_speech does
wyoming_piper = remote.wyoming_piper


@pytest.fixture
async def hanging_endpoint(nursery):
    """tcp://: accepts every connection and never sends a byte."""

    async def handler(stream):
        async with stream:
            await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.fixture
def syn_dropping_endpoint():
    """host:port whose listen queue is full: the kernel drops new SYNs (connect hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)  # the one queue slot
    yield f"127.0.0.1:{port}"
    filler.close()
    server.close()


@pytest.fixture
async def stt_serve(stt, nursery):
    from voxbridge.stt.serve import serve

    async def start(language="en"):
        s = load_settings(env={})
        s = attrs.evolve(s, stt=attrs.evolve(s.stt, language=language))
        return await nursery.start(
            lambda task_status: serve(s, ws_port=0, wyoming_port=0, engine=stt, task_status=task_status)
        )

    return start


# --- 11, 12: per-attempt deadlines, failover, back-off, errors that say what timed out ---------


async def test_an_endpoint_that_accepts_and_never_answers_fails_over_within_its_share(
    wyoming_whisper, hanging_endpoint, speech
):
    engine = WyomingStt(stt_settings("wyoming", [f"tcp://{hanging_endpoint}", wyoming_whisper], timeout_s=30))
    t0 = trio.current_time()
    tr = await engine.transcribe(speech.pcm16k(TEXT))  # before: SttError after the full 30 s
    assert wer(TEXT, tr.text) <= 0.25, tr.text
    assert trio.current_time() - t0 < 30  # the hanging one had its share (15 s), not the budget
    assert engine.pool.failures[f"tcp://{hanging_endpoint}"] == 1
    assert engine.pool.ranked()[0] == wyoming_whisper  # marked failed: cooling down


async def test_timeouts_say_what_timed_out_where(hanging_endpoint, syn_dropping_endpoint, speech):
    hang, dropped = f"tcp://{hanging_endpoint}", f"tcp://{syn_dropping_endpoint}"
    engine = WyomingStt(stt_settings("wyoming", [hang, dropped], timeout_s=4))
    with pytest.raises(SttError) as err:
        await engine.transcribe(speech.pcm16k("Hello there."))
    message = str(err.value)  # before: "wyoming STT failed: " and nothing else
    assert "within 4s" in message and hang in message and dropped in message, message
    assert "no answer within" in message and "connect and transcript" in message, message


async def test_tts_fails_over_past_dropped_syns_and_a_silent_server(
    wyoming_piper, syn_dropping_endpoint, hanging_endpoint, stt
):
    uri, voice = wyoming_piper
    # Wyoming: the connect times out (trio.TooSlowError), which was not retryable for TTS.
    engine = WyomingTts(
        tts_settings("wyoming", [f"tcp://{syn_dropping_endpoint}", uri], remote_voice=voice, timeout_s=30)
    )
    sp = await engine.synthesize("How far away is the moon?")
    heard = await stt.transcribe(resample(sp.audio, sp.rate, STT_RATE))
    assert wer("How far away is the moon?", heard.text) <= 0.25, heard.text
    assert engine.pool.failures[f"tcp://{syn_dropping_endpoint}"] == 1
    # A server that accepts and never answers, before a working one.
    engine = WyomingTts(tts_settings("wyoming", [f"tcp://{hanging_endpoint}", uri], remote_voice=voice, timeout_s=20))
    sp = await engine.synthesize("Turn on the kitchen lights.")
    assert len(sp.audio) / sp.rate > 1 and engine.pool.failures[f"tcp://{hanging_endpoint}"] == 1


def test_a_dead_endpoint_backs_off_and_is_not_tried_on_every_busy_moment():
    now = [0.0]
    pool = EndpointPool(["dead", "good"], cooldown_s=5.0, clock=lambda: now[0])
    pool.outstanding["good"] = 1  # the good one is busy: least-outstanding would pick "dead"
    tried_dead = 0
    for _ in range(60):  # a busy minute, one request per second; "dead" fails whenever tried
        if pool.ranked()[0] == "dead":
            tried_dead += 1
            pool.mark_failed("dead")
        now[0] += 1.0
    # before: a fixed 5 s cool-down, so tried every 5 s (12 times); now 5, 10, 20, 40 s apart
    assert tried_dead <= 4, tried_dead
    pool.mark_ok("dead")
    assert pool.ranked()[0] == "dead"  # once it answers, it is an ordinary endpoint again


# --- 13: the websocket backend -----------------------------------------------------------------


async def test_websocket_stt_long_utterance_rejected_endpoint_and_errors_stay_in_the_turn(stt_serve, speech, nursery):
    from trio_websocket import serve_websocket

    server, ports = await stt_serve()
    good = f"ws://127.0.0.1:{ports['websocket']}"

    async def reject(request):
        await request.reject(403, body=b"go away")

    rejecting = await nursery.start(
        lambda task_status: serve_websocket(reject, "127.0.0.1", 0, None, task_status=task_status)
    )
    bad = f"ws://127.0.0.1:{rejecting.port}"
    sentence = speech.pcm16k("Please tell me a short story about a friendly dragon.")
    gap = np.zeros(STT_RATE // 2, np.float32)
    last = speech.pcm16k("What time is it in Tokyo?")  # a different last sentence: the tail arrived
    long = np.concatenate([np.concatenate([sentence, gap])] * 11 + [last])
    assert len(long) * 2 > 1 << 20  # over the 1 MiB a websocket message may carry (~33 s)
    tr = await WebsocketStt(stt_settings("websocket", [good], timeout_s=120)).transcribe(
        long
    )  # before: ConnectionClosed escaped
    # tiny.en collapses some of the identical repeats; the first and the last sentence prove it all arrived
    assert "dragon" in tr.text.lower() and "tokyo" in tr.text.lower(), tr.text
    engine = WebsocketStt(stt_settings("websocket", [bad, good], timeout_s=60))
    tr = await engine.transcribe(sentence)  # before: trio_websocket.ConnectionRejected escaped
    assert wer("Please tell me a short story about a friendly dragon.", tr.text) <= 0.25, tr.text
    assert engine.pool.failures[bad] == 1 and server.load["served"] == 2
    only_bad = WebsocketStt(stt_settings("websocket", [bad], timeout_s=10))
    with pytest.raises(SttError, match="403"):  # one turn fails; nothing else escapes
        await only_bad.transcribe(sentence)
    too_long = np.zeros(121 * STT_RATE, np.float32)
    with pytest.raises(SttError, match="longer than"):
        await engine.transcribe(too_long)


# --- 14: the hallucination filter, confidence, stt-serve's audio formats and info ------------------


async def test_remote_stt_filters_phantoms_on_silence_and_keeps_real_short_speech(wyoming_whisper, speech):
    engine = WyomingStt(stt_settings("wyoming", [wyoming_whisper]))
    tr = await engine.transcribe(np.zeros(2 * STT_RATE, np.float32))  # wyoming-faster-whisper: " You"
    assert tr.text == "" and tr.dropped == "no_speech" and tr.confidence == 0.0, tr  # before: "You", 1.00
    tr = await engine.transcribe(speech.pcm16k("Thank you."))  # a real "thank you" stays
    assert "thank" in tr.text.lower() and not tr.dropped, tr


def test_the_remote_filter_judges_phantoms_by_the_audio(speech):
    from voxbridge.stt.filters import remote_drop_reason

    hiss = (np.random.default_rng(7).standard_normal(2 * STT_RATE) * 0.03).astype(np.float32)  # -30 dBFS
    assert remote_drop_reason(" You", hiss) == "phantom_phrase"  # what servers say to hiss
    assert remote_drop_reason("You", hiss * 0.05) == "phantom_phrase"  # quiet
    assert remote_drop_reason("Thank you.", speech.pcm16k("Thank you.")) == ""
    assert remote_drop_reason("Thank you.", speech.pcm16k("Thank you."), confidence=0.3) == "phantom_phrase"
    assert remote_drop_reason("[Music]", speech.pcm16k("Hello there.")) == "annotation"
    assert remote_drop_reason("Hello there.", np.zeros(STT_RATE, np.float32)) == "no_speech"


async def test_stt_serve_confidence_stereo_rates_and_configured_language(stt_serve, stt, speech):
    server, ports = await stt_serve(language="fr")
    clip = pcm16_to_float(float_to_pcm16(speech.pcm16k("What time is it in Tokyo?")))  # as the wire carries it
    local = await stt.transcribe(clip, language="en")
    remote = await WebsocketStt(stt_settings("websocket", [f"ws://127.0.0.1:{ports['websocket']}"])).transcribe(
        clip, language="en"
    )
    # The server decodes in its own engine (other threads, batched): the same audio's confidence agrees to
    # about a hundredth (CI saw 0.955 vs 0.960), never 1.0 as before.
    assert local.confidence < 0.999 and abs(remote.confidence - local.confidence) < 0.02, (
        local,
        remote,
    )  # before: 1.0
    # Wyoming: 22.05 kHz stereo (before: "send 16-bit mono audio"); info lists the configured language.
    conn = await WyomingConnection.connect(f"tcp://127.0.0.1:{ports['wyoming']}")
    try:
        await conn.send("describe")
        info = await conn.receive()
        assert info.data["asr"][0]["models"][0]["languages"] == ["fr"]  # before: always ["en"]
        mono = resample(clip, STT_RATE, 22050)
        stereo = np.stack([mono, mono * 0.5], axis=1).reshape(-1)
        fmt = {"rate": 22050, "width": 2, "channels": 2}
        await conn.send("transcribe", {"language": "en"})
        await conn.send("audio-start", fmt)
        pcm = float_to_pcm16(stereo).tobytes()
        for i in range(0, len(pcm), 88200):
            await conn.send("audio-chunk", fmt, pcm[i : i + 88200])
        await conn.send("audio-stop", {})
        event = await conn.receive()
    finally:
        await conn.aclose()
    assert event.type == "transcript" and wer("What time is it in Tokyo?", event.data["text"]) <= 0.25, event
    # The length limit is 120 s at any rate: 125 s at 8 kHz is refused at the header (before: the
    # limit was 2 min x max(1, rate // 16000) of 16 kHz bytes, so at 8 kHz 240 s went through,
    # and at 44.1 kHz 87 s was the most).
    from trio_websocket import open_websocket_url

    with trio.fail_after(30):  # before: the server waited for the audio
        async with open_websocket_url(f"ws://127.0.0.1:{ports['websocket']}") as ws:
            await ws.send_message(
                json.dumps({"type": "transcribe", "language": "en", "rate": 8000, "bytes": 125 * 8000 * 2})
            )
            reply = json.loads(await ws.get_message())
    assert reply["type"] == "error" and "longer than 120 seconds" in reply["error"], reply
    from voxbridge.stt.serve import max_audio_bytes

    assert max_audio_bytes(44100) == 120 * 44100 * 2 and max_audio_bytes(48000, 2) == 120 * 48000 * 4


async def test_stt_serve_info_lists_the_model_language_when_auto_detecting(stt_serve):
    server, ports = await stt_serve(language="")
    assert server.languages() == ["en"]  # the bundled tiny.en


# --- 15: OpenAI TTS from servers that speak at 22.05 kHz ---------------------------------------------


async def test_openai_tts_gets_the_servers_sample_rate(piper, stt, agent_server, tmp_path):
    formats = []

    async def handler(req, resp):
        body = req.json()
        formats.append(body.get("response_format"))
        sp = piper.synthesize_sync(body["input"])  # the bundled voice: 22.05 kHz
        assert sp.rate == 22050
        pcm = float_to_pcm16(sp.audio).tobytes()
        if body.get("voice") == "pcm-with-rate":  # raw PCM always, the rate in the content type
            await resp.respond(200, pcm, "audio/pcm;rate=22050")
        elif body.get("response_format") == "wav":
            write_wav(tmp_path / "answer.wav", pcm, 22050)
            await resp.respond(200, (tmp_path / "answer.wav").read_bytes(), "audio/wav")
        else:  # like local servers asked for "pcm": 22.05 kHz with nothing saying so
            await resp.respond(200, pcm, "audio/pcm")

    url = await agent_server(handler)
    text = "How far away is the moon?"
    for voice in ("default", "pcm-with-rate"):
        engine = OpenAiTts(tts_settings("openai", [url], remote_voice=voice))
        sp = await engine.synthesize(text)
        assert sp.rate == 22050, (voice, sp.rate)  # before: 24000, played 9% fast
        heard = await stt.transcribe(resample(sp.audio, sp.rate, STT_RATE))
        assert wer(text, heard.text) <= 0.25, heard.text
    assert formats[0] == "wav"


async def test_stt_serve_applies_the_name_prompt_and_bounds_it(stt_serve, stt, speech):
    """Addressed mode's name prompt reaches stt-serve's engine (before: dropped by every remote backend)."""
    from voxbridge.core.conversation import name_prompt
    from voxbridge.stt.serve import MAX_PROMPT_CHARS

    _, ports = await stt_serve()
    said = "VoxBridge, what time is it in Tokyo?"
    clip = pcm16_to_float(float_to_pcm16(speech.pcm16k(said)))  # as the wire carries it
    prompt = name_prompt(("VoxBridge",))
    # The same audio decodes to slightly different text from call to call (CTranslate2 int8 on
    # two workers: "Box Bridge." once, "Buck's Bridge." another time), so the checks are on the name.
    plain = await stt.transcribe(clip, language="en")
    assert "voxbridge" not in plain.text.lower(), plain  # premise: unprompted, tiny.en misses the name
    local = await stt.transcribe(clip, language="en", prompt=prompt)
    assert local.text.lower().startswith("voxbridge"), local  # premise: the prompt makes it heard
    client = WebsocketStt(stt_settings("websocket", [f"ws://127.0.0.1:{ports['websocket']}"]))
    remote_tr = await client.transcribe(clip, language="en", prompt=prompt)
    assert remote_tr.text.lower().startswith("voxbridge"), remote_tr  # the prompt reached the server's engine
    assert wer(said, remote_tr.text) <= 0.25, remote_tr
    with pytest.raises(SttError, match=f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters"):
        await client.transcribe(clip, language="en", prompt="x" * (MAX_PROMPT_CHARS + 1))
