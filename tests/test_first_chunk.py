"""Speech out starts early: an agent slow to finish its first sentence has its first words
spoken as a short first chunk; the decision is recorded while the request goes out."""

import json
import time

import trio

from voxbridge.agents.config import parse_agents
from voxbridge.core.playback import CollectSink, Playback
from voxbridge.core.services import open_services
from voxbridge.core.speech import FIRST_CHUNK_WAIT_S
from voxbridge.core.turn import answer_transcript
from voxbridge.core.utterance import SpeakerInfo
from voxbridge.stt import Transcript
from voxbridge.tts.splitter import ClauseSplitter


def chunk(text, words=6):
    s = ClauseSplitter()
    assert s.feed(text) == []
    return s.first_chunk(words), s.flush()


def test_first_chunk_cuts_at_a_comma_after_two_words():
    assert chunk("Well, let me see, I think the answer") == (["Well, let me see,"], ["I think the answer"])


def test_first_chunk_cuts_after_six_complete_words():
    assert chunk("I am going to look this up for you") == (["I am going to look this"], ["up for you"])


def test_first_chunk_waits_for_complete_words():
    # "this" may still be growing ("thistle"): only five words are complete
    assert chunk("I am going to look this") == ([], ["I am going to look this"])
    assert chunk("Hi, there") == ([], ["Hi, there"])  # one word before the comma, two words in all


def test_first_chunk_then_normal_sentences():
    s = ClauseSplitter()
    s.feed("Let me check the calendar for next")
    assert s.first_chunk() == ["Let me check the calendar for"]
    assert s.feed(" week. You are free on Monday. ") == ["next week.", "You are free on Monday."]


def agents_config(url):
    return parse_agents(
        f'[[agents]]\nid = "general"\nkind = "n8n"\nurl = "{url}/general"\nretries = 0\n', "t.toml", env={}
    )


async def test_slow_agent_first_words_are_spoken_before_the_sentence_ends(settings, piper, agent_server):
    tokens = "I am going to look this up for you right away. ".split(" ")
    sent_at = {}

    async def handler(req, resp):
        await resp.start(200, {"content-type": "application/json"})
        await resp.send((json.dumps({"type": "begin"}) + "\n").encode())
        for i, tok in enumerate(tokens):
            if tok:
                await resp.send((json.dumps({"type": "item", "content": tok + " "}) + "\n").encode())
                sent_at[i] = time.perf_counter()
                await trio.sleep(0.5)  # a slow model (2 tokens/s): the first words have ~2 s to be spoken
        await resp.send((json.dumps({"type": "end"}) + "\n").encode())
        await resp.end()

    url = await agent_server(handler)
    clauses = []
    playback = Playback(CollectSink(), on_clause=lambda text, seconds: clauses.append((text, time.perf_counter())))
    async with (
        open_services(settings, agents=agents_config(url), stt=False, tts=piper) as services,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(playback.run)
        tr = Transcript(text="Can you look up my order?", language="en", confidence=0.9, duration_s=1.5)
        timings = {}
        out = await answer_transcript(
            services,
            SpeakerInfo("u1", "alice", "g1", "c1"),
            tr,
            ended_at=trio.current_time(),
            timings=timings,
            playback=playback,
        )
        nursery.cancel_scope.cancel()
    assert out.status == "answered"
    assert [c for c, _ in clauses] == ["I am going to look this", "up for you right away."]
    last_word_at = sent_at[max(sent_at)]
    assert clauses[0][1] < last_word_at  # the first words played while the agent was still writing
    assert timings["first_clause_ms"] < timings["agent_done_ms"]


async def test_fast_agent_sentences_are_not_cut(settings, piper, agent_server):
    async def handler(req, resp):
        await resp.respond(200, {"output": "I am going to look this up for you right away. It is on its way."})

    url = await agent_server(handler)
    clauses = []
    playback = Playback(CollectSink(), on_clause=lambda text, seconds: clauses.append(text))
    async with (
        open_services(settings, agents=agents_config(url), stt=False, tts=piper) as services,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(playback.run)
        tr = Transcript(text="Where is my order?", language="en", confidence=0.9, duration_s=1.5)
        out = await answer_transcript(
            services,
            SpeakerInfo("u1", "alice", "g1", "c1"),
            tr,
            ended_at=trio.current_time(),
            timings={},
            playback=playback,
        )
        nursery.cancel_scope.cancel()
    assert out.status == "answered"
    assert clauses == ["I am going to look this up for you right away.", "It is on its way."]
    assert FIRST_CHUNK_WAIT_S > 0


async def test_decision_is_recorded_and_never_overwrites_the_final_status(settings, agent_server):
    seen = []

    async def handler(req, resp):
        seen.append(json.loads(req.body)["turnId"])
        await resp.respond(200, {"output": "Done."})

    url = await agent_server(handler)
    async with open_services(settings, agents=agents_config(url), stt=False, tts=False) as services:
        spk = SpeakerInfo("u1", "alice", "g1", "c1")
        outs = [
            await answer_transcript(
                services,
                spk,
                Transcript(text=f"question {i}", language="en", confidence=0.9, duration_s=1.0),
                ended_at=trio.current_time(),
                timings={},
                playback=None,
            )
            for i in range(20)
        ]
        rows = [await services.store.get_turn(o.turn_id) for o in outs]
        decisions = await services.store.decisions(limit=100)
    assert seen == [o.turn_id for o in outs]
    assert all(
        r["status"] == "answered" and r["route_method"] == "fallback" and r["agent_id"] == "general" for r in rows
    )
    assert sorted(d["turn_id"] for d in decisions) == sorted(o.turn_id for o in outs)
