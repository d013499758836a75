"""Routing words: one normalisation for keywords and transcripts (voxbridge/words.py).

The table is transcripts as Whisper writes them (capitals, punctuation, digits, possessives,
contractions, hyphens, curly apostrophes) against keywords as an operator writes them."""

import pytest

from voxbridge.words import Text, keyword_problem, words

from .test_explain import explain

MATCH = [
    ("The weather's terrible today.", "weather"),
    ("What's the weather like in Paris?", "weather"),
    ("Play something from Spotify's top charts.", "spotify"),
    ("Open Spotify.", "Spotify"),
    ("What’s on my calendar tomorrow?", "calendar"),  # curly apostrophe
    ("What’s on my calendar tomorrow?", "what's"),
    ("I can't log in to my account.", "log in"),
    ("I can't log in to my account.", "can't"),
    ("I can't log in to my account.", "cannot"),
    ("It won't start.", "will not"),
    ("The app won't open after the update.", "won't"),
    ("We're out of coffee.", "we are"),
    ("I'd like to book a table.", "book a table"),
    ("Set a timer for 12 minutes.", "twelve"),
    ("Set a timer for twelve minutes.", "12"),
    ("Wake me up at 7.", "seven"),
    ("The meeting is at 3 o'clock.", "3 o'clock"),
    ("Remind me in twenty-one days.", "21"),
    ("Remind me in 21 days.", "twenty one"),
    ("Remind me in 21 days.", "twenty-one"),
    ("Add 1,000 dollars to the budget.", "1000"),
    ("I need a follow-up on the invoice.", "follow up"),
    ("I need a follow up on the invoice.", "follow-up"),
    ("The wi-fi is down again.", "wifi"),
    ("The Wi-Fi is down again.", "wi-fi"),
    ("The wifi is down again.", "wi-fi"),
    ("Send me an e-mail about it.", "email"),
    ("Let's order from the café downstairs.", "café"),
    ("Let's order from the cafe downstairs.", "café"),
    ("Let's order from the café downstairs.", "cafe"),
    ("My résumé needs work.", "resume"),
    ("We met at the Straße festival.", "strasse"),
    ("ＨＥＬＬＯ there", "hello"),  # full-width letters (NFKC)
    ("There's a BUG in the login page!", "bug"),
    ("Bug report: the app crashed.", "bug"),
    ("The app crashed, again...", "crashed"),
    ("Turn the volume up, please.", "volume up"),
    ("Turn the volume up—please.", "please"),  # em dash
    ("Is it going to rain? I'm not sure.", "rain"),
    ("I'm not sure.", "i am"),
    ("The dogs' toys are everywhere.", "dogs"),
    ("Tell me about Nvidia's earnings.", "nvidia"),
    ("Who's the CEO of OpenAI?", "openai"),
    ("How's the stock market doing?", "stock market"),
    ("Book a flight to New York.", "new york"),
    ("Book a flight to New York City.", "New York"),
    ("«Bonjour», said Zoë.", "zoe"),
    ("Order two pizzas.", "2"),
    ("I've got 99 problems.", "ninety-nine"),
]

NO_MATCH = [
    ("I'm debugging the login page.", "bug"),  # whole words only
    ("Replay the musical.", "play music"),  # a phrase is whole words in a row, not a substring
    ("Play some music.", "play music"),
    ("I can't log into my account.", "log in"),
    ("The weatherman was wrong.", "weather"),
    ("Set a timer for 12 minutes.", "twenty"),
    ("Remind me in 21 days.", "1"),
    ("My resume needs work.", "resumes"),  # no stemming: list plural forms too
    ("Bugs everywhere.", "bug"),
    ("Where is the café?", "caf"),
]


@pytest.mark.parametrize(("transcript", "keyword"), MATCH)
def test_keyword_matches_the_transcript(transcript, keyword):
    assert Text(transcript).find(keyword) is not None, (words(transcript), words(keyword))


@pytest.mark.parametrize(("transcript", "keyword"), NO_MATCH)
def test_keyword_does_not_match(transcript, keyword):
    assert Text(transcript).find(keyword) is None, (words(transcript), words(keyword))


def test_table_is_big_enough():
    assert len(MATCH) + len(NO_MATCH) >= 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The weather's terrible.", ["the", "weather", "terrible"]),
        ("I can’t log in", ["i", "can", "not", "log", "in"]),
        ("twenty-one pilots", ["21", "pilots"]),
        ("seventy seven", ["77"]),
        ("1,000 dollars, pi is 3.14", ["1000", "dollars", "pi", "is", "3.14"]),
        ("naïve Straße", ["naive", "strasse"]),
        ("Привет мир", ["привет", "мир"]),
        ("Hello!!! World...", ["hello", "world"]),
    ],
)
def test_words(text, expected):
    assert words(text) == expected


def test_keyword_problems():
    assert "never match" in keyword_problem("!!!")
    assert "'++'" in keyword_problem("c++")
    assert keyword_problem("weather's") is None
    assert keyword_problem("café") is None


def test_router_uses_the_words():
    assert explain("The weather's terrible.")[0].agent_ids == ("weather",)
    assert explain("Meet me at the cafe at 12.")[0].agent_ids == ("weather",)
    d, lines = explain("Play Spotify's top songs.")
    assert (d.method, d.rule_id) == ("rule", "music")
    assert lines[-1] == "rule music: chosen: keyword 'spotify'"
    assert explain("Hello there.")[0].method == "fallback"


def test_check_warns_about_keywords_that_cannot_match(tmp_path):
    from .test_cli import vbx

    f = tmp_path / "agents.toml"
    f.write_text(
        '[[agents]]\nid = "a"\nkind = "n8n"\nurl = "http://127.0.0.1:9/a"\nkeywords = ["weather\'s", "!!!"]\n\n'
        '[[rules]]\nid = "r"\nagents = ["a"]\nmatch = { keywords = ["c++"] }\n'
    )
    r = vbx("check", "--agents", str(f))
    assert r.returncode == 0, r.stderr
    assert "warning: agent a: keyword '!!!' has no letters or digits, so it can never match" in r.stdout
    assert "warning: rule r: keyword 'c++' matches as 'c'" in r.stdout
    assert "weather's" not in r.stdout
