"""The shared config mechanism: cattrs' error paths mapped to file:line, key and reason, for both files."""

import pytest

from voxbridge.agents.config import parse_agents
from voxbridge.config import load_settings
from voxbridge.confkit import Locator
from voxbridge.errors import ConfigError

AGENTS = """[routing]
strategy = "broadcast"

[[agents]]
id = "a"
kind = "n8n"
url = "http://127.0.0.1:9/a"
tts.voice = "x.onnx"

[[agents]]
"id" = "b"
kind = "n8n"
url = "http://127.0.0.1:9/b"
[agents.headers]
X-Key = "k"
[agents.tts]
voice = "y.onnx"

[[rules]]
id = "r"
agents = ["a"]
[rules.match]
regex = "x"
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("routing", "strategy"), 2),
        (("routing", "default_agent"), 1),  # not written: the table's header
        (("agents", 0, "url"), 7),
        (("agents", 0, "tts", "voice"), 8),  # a dotted key
        (("agents", 1, "id"), 11),  # a quoted key
        (("agents", 1, "headers", "X-Key"), 15),  # sub-tables of the second block
        (("agents", 1, "tts", "voice"), 17),
        (("agents", 2, "id"), None),  # no third block
        (("rules", 0, "match", "regex"), 23),
        (("rules", 0, "agents"), 21),
    ],
)
def test_locator_follows_blocks_and_sub_tables(path, line):
    assert Locator(AGENTS).line(path) == line
    assert len(parse_agents(AGENTS, env={}).agents) == 2  # the text is valid agents.toml


def test_locator_finds_inline_tables_above_the_first_header():
    assert Locator('vad = { silence_ms = 5 }\n[stt]\nmodel = ""\n').line(("vad", "silence_ms")) == 1


def test_a_misspelt_key_is_reported_before_the_key_it_leaves_missing():
    with pytest.raises(ConfigError) as err:
        parse_agents('[[agents]]\nid = "a"\nkind = "n8n"\nulr = "http://h/x"\n', "a.toml", env={})
    assert str(err.value).startswith("a.toml:4: agents[0].ulr: unknown key; known: id, name, kind, url,")


@pytest.mark.parametrize(
    ("extra", "line", "reason"),
    [
        ("[agents.tts]\nvoice = 5\n", 6, "agents[0].tts.voice: expected a string, got 5"),
        ('api_key = ["k-Secret-1"]\n', 5, "agents[0].api_key: expected a string, got list (value not shown"),
        ('headers = { X = "${NOT_SET}" }\n', 5, "agents[0].headers.X: environment variable NOT_SET is not set"),
        ("retries = 11\n", 5, "agents[0].retries: must be between 0 and 10, got 11"),
        ('kind = "openai"\n', 1, "agents[0]: kind 'openai' needs model"),
    ],
)
def test_agents_errors_name_line_key_and_reason(extra, line, reason):
    text = '[[agents]]\nid = "a"\nurl = "http://h/x"\nkind = "n8n"\n' + extra
    if extra.startswith("kind"):
        text = text.replace('kind = "n8n"\n', "")
    with pytest.raises(ConfigError) as err:
        parse_agents(text, "a.toml", env={})
    assert str(err.value).startswith(f"a.toml:{line}: {reason}"), str(err.value)
    assert "k-Secret-1" not in str(err.value)


def test_agent_name_defaults_to_its_id_and_keywords_are_lowercased():
    cfg = parse_agents('[[agents]]\nid = "a"\nkind = "n8n"\nurl = "http://h/x"\nkeywords = ["Bug"]\n', env={})
    assert cfg.agents[0].name == "a" and cfg.agents[0].keywords == ("bug",)


def test_settings_errors_name_the_line_or_the_variable(tmp_path):
    path = tmp_path / "voxbridge.toml"
    path.write_text("[general]\n\n[vad]\nearly_ms = 100\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value).startswith(f"{path}:3: [vad].tail_ms: must be <= early_ms (100) so the early decode")
    with pytest.raises(ConfigError) as err:  # a cross-field rule names the variable that set the value
        load_settings(path, env={"VOXBRIDGE_VAD__TAIL_MS": "120"})
    assert str(err.value).startswith("VOXBRIDGE_VAD__TAIL_MS: must be <= early_ms (100)")


def test_only_environment_text_stands_for_numbers_booleans_and_lists(tmp_path):
    s = load_settings(env={"VOXBRIDGE_LOG__LEVELS": "a=debug, b=info", "VOXBRIDGE_DAEMON__DISCORD": "no"})
    assert s.log.levels == ("a=debug", "b=info") and s.daemon.discord is False
    path = tmp_path / "voxbridge.toml"
    path.write_text('[daemon]\ndiscord = "no"\n')
    with pytest.raises(ConfigError, match=r":2: \[daemon\].discord: expected true or false, got 'no'"):
        load_settings(path, env={})
