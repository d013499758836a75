"""Admission: the room's rules for whether a transcribed turn is routed, as a pure function."""

from voxbridge.core.admission import admit

PHRASES = ("VoxBridge", "hey computer")


def test_conversation_mode_routes_the_transcript_as_heard():
    a = admit("What time is it?", mode="conversation", rate_ok=True, echo=False, wake_phrases=PHRASES)
    assert a.admitted and a.text == "What time is it?" and a.reason is None


def test_rate_limit_comes_first_then_echo_then_transcribe_only():
    assert admit("x y", mode="addressed", rate_ok=False, echo=True, wake_phrases=PHRASES).reason == "rate_limited"
    assert admit("x y", mode="transcribe", rate_ok=True, echo=True, wake_phrases=PHRASES).reason == "echo"
    assert admit("x y", mode="transcribe", rate_ok=True, echo=False, wake_phrases=PHRASES).reason == "transcribe_only"


def test_addressed_mode_strips_the_wake_phrase():
    a = admit("VoxBridge, what time is it?", mode="addressed", rate_ok=True, echo=False, wake_phrases=PHRASES)
    assert a.admitted and a.text == "what time is it?"
    a = admit("Hey computer what's up", mode="addressed", rate_ok=True, echo=False, wake_phrases=PHRASES)
    assert a.admitted and a.text == "what's up"


def test_addressed_mode_without_the_name_or_with_only_the_name_is_not_routed():
    a = admit("what time is it, VoxBridge", mode="addressed", rate_ok=True, echo=False, wake_phrases=PHRASES)
    assert not a.admitted and a.reason == "not_addressed"
    a = admit("VoxBridge.", mode="addressed", rate_ok=True, echo=False, wake_phrases=PHRASES)
    assert not a.admitted and a.reason == "wake_phrase_only"


def test_not_routed_keeps_the_text_as_heard():
    a = admit("VoxBridge hello there", mode="transcribe", rate_ok=True, echo=False, wake_phrases=PHRASES)
    assert a.text == "VoxBridge hello there" and a.reason == "transcribe_only"
