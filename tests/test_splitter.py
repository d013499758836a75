from voxbridge.tts.splitter import ClauseSplitter


def _run(text, step=1, **kw):
    s = ClauseSplitter(**kw)
    out = []
    for i in range(0, len(text), step):
        out += s.feed(text[i : i + step])
    return out + s.flush()


def test_sentences_split_but_not_abbreviations_numbers_urls():
    text = "Hello Dr. Smith, pi is 3.14 today. See example.com/a.b now! Is it J. Doe? Yes\nok e.g. this. The end"
    expected = [
        "Hello Dr. Smith, pi is 3.14 today.",
        "See example.com/a.b now!",
        "Is it J. Doe?",
        "Yes",
        "ok e.g. this.",
        "The end",
    ]
    for step in (1, 3, 1000):  # streamed token sizes must not change the result
        assert _run(text, step) == expected


def test_long_text_without_punctuation_is_cut_softly():
    text = "word " * 100
    clauses = _run(text, 7, max_chars=60)
    assert all(len(c) <= 60 for c in clauses)
    assert " ".join(clauses).split() == text.split()


def test_clause_ready_as_soon_as_the_sentence_ends():
    s = ClauseSplitter()
    assert s.feed("First sentence.") == []  # could still be "First sentence.com"
    assert s.feed(" Sec") == ["First sentence."]
