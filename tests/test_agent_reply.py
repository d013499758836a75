"""Reply parsing on real n8n 1.123.0 captures, split at every possible byte boundary."""

from pathlib import Path

import pytest

from voxbridge.agents.reply import ReplyError, ReplyParser

FIX = Path(__file__).parent / "fixtures" / "n8n"


def http_body(name: str) -> bytes:
    raw = (FIX / name).read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not body:
        head, _, body = raw.partition(b"\n\n")
    return body


def parse(chunks):
    p = ReplyParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    out += p.finish()
    return "".join(out), p


def test_n8n_streaming_respond_to_webhook_unwraps_json_string():
    body = http_body("streaming-respond-to-webhook.http")
    expected = "You asked: what time is it. Here is my answer. It has two sentences."
    for cut in range(1, len(body)):  # chunk boundaries anywhere, mid-JSON included
        text, p = parse([body[:cut], body[cut:]])
        assert text == expected
        assert p.mode == "n8n_stream"


def test_n8n_json_answer():
    text, p = parse([http_body("json-respond-to-webhook.http")])
    assert text == "Plain answer to: hello" and p.mode == "buffered"


def test_n8n_agent_token_stream_and_keepalive_and_handoff():
    lines = [
        b'{"type":"begin","metadata":{"nodeId":"x"}}\n',
        b'{"type":"keepalive"}\n',
        b'{"type":"item","content":"Hello"}\n{"type":"item","content":" there."}\n',
        b'{"type":"future-type","content":"ignored"}\n',
        b'{"type":"end","metadata":{"nodeId":"x","handoff":"tech"}}\n',
    ]
    body = b"".join(lines)
    for size in (1, 5, 64, len(body)):
        text, p = parse([body[i : i + size] for i in range(0, len(body), size)])
        assert text == "Hello there."
        assert p.handoff == "tech"


@pytest.mark.parametrize(
    ("body", "text", "handoff"),
    [
        (b'{"output": "a"}', "a", None),
        (b'{"content": "b", "handoff": "tech"}', "b", "tech"),
        (b'[{"output": "c"}]', "c", None),
        (b'{"message": {"content": "d"}}', "d", None),
        (b"plain text answer", "plain text answer", None),
        (b'{\n  "text": "pretty"\n}\n', "pretty", None),
    ],
)
def test_buffered_shapes(body, text, handoff):
    got, p = parse([body])
    assert got == text and p.handoff == handoff


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([b'{"type":"begin"}\n{"type":"error","content":"Workflow failed"}\n'], "agent_error"),
        ([b'{"type":"begin"}\n{"type":"item","content":"x"}\n{not json\n'], "garbage"),
        ([b'{"unexpected": 1}'], "garbage"),
        ([b'{"output": "broken'], "garbage"),
        ([b"   "], "empty_response"),
    ],
)
def test_errors_are_reported_with_reason(chunks, reason):
    with pytest.raises(ReplyError) as err:
        parse(chunks)
    assert err.value.reason == reason
