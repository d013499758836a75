"""agents.toml validation: every error names file:line and says why."""

from pathlib import Path

import pytest

from voxbridge.agents.config import load_agents, parse_agents
from voxbridge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[routing]
strategy = "content_based"
default_agent = "general"

[[agents]]
id = "general"
kind = "n8n"
url = "${HOOK:-http://127.0.0.1:5678/webhook/general}"

[[agents]]
id = "tech"
kind = "webhook"
url = "http://127.0.0.1:9/tech"
keywords = ["bug", "Error"]
guilds = ["g1"]
[agents.tts]
voice = ""

[[agents]]
id = "llm"
kind = "openai"
url = "http://127.0.0.1:11434/v1/chat/completions"
model = "llama3"
api_key = "${LLM_KEY:-}"
system_prompt = "Be brief."

[[rules]]
id = "code"
priority = 10
agents = ["tech", "general"]
match = { keywords = ["stack trace"], regex = "^(fix|debug)\\\\b" }
"""


def test_the_shipped_file_is_valid():
    cfg = load_agents(ROOT / "agents.toml", env={})
    assert cfg.routing.default_agent == "general" and {a.id for a in cfg.agents} >= {"general", "tech"}


def test_good_file_parses_with_env_interpolation():
    cfg = parse_agents(GOOD, "a.toml", env={"HOOK": "https://n8n.example/webhook/SECRETPATH"})
    assert cfg.get("general").url == "https://n8n.example/webhook/SECRETPATH"
    assert cfg.get("tech").keywords == ("bug", "error")
    assert cfg.rules[0].compiled.search("Fix the login") and cfg.rules[0].match.keywords == ("stack trace",)
    assert cfg.get("llm").model == "llama3" and cfg.get("llm").api_key == ""
    assert "SECRETPATH" not in repr(cfg)  # the webhook key never appears in reprs


@pytest.mark.parametrize(
    ("edit", "line", "reason"),
    [
        (('kind = "n8n"', 'kind = "smtp"'), 8, "unknown kind 'smtp'"),
        (('id = "tech"', 'id = "general"'), 12, "duplicate agent id 'general'"),
        (('agents = ["tech", "general"]', 'agents = ["tech", "nobody"]'), 31, "no agent with id 'nobody'"),
        (('url = "http://127.0.0.1:9/tech"', 'url = "ftp://x"'), 14, "not an http(s) URL"),
        (('keywords = ["bug", "Error"]', 'keywords = "bug"'), 15, "expected a list of strings"),
        (('model = "llama3"', 'modle = "llama3"'), 24, "unknown key"),
        (('default_agent = "general"', 'default_agent = "ghost"'), 4, "no agent with id 'ghost'"),
        (('strategy = "content_based"', 'strategy = "random"'), 3, "unknown strategy"),
        (("[[rules]]", "[[rules]\n"), 28, "invalid TOML"),
    ],
)
def test_errors_name_file_line_and_reason(edit, line, reason):
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(ConfigError) as err:
        parse_agents(text, "a.toml", env={})
    assert f"a.toml:{line}" in str(err.value), str(err.value)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(?=a)b", "lookarounds"),
        ("(a?){300}a{300}", "too complex"),
        ("(a)\\\\1", "backreferences"),
        ("([a-z", "invalid regex"),
    ],
)
def test_dangerous_or_broken_regexes_are_rejected_at_load(pattern, reason):
    import re

    text = re.sub(r'regex = "[^"]*"', lambda m: f'regex = "{pattern}"', GOOD)
    with pytest.raises(ConfigError) as err:
        parse_agents(text, "a.toml", env={})
    assert "a.toml:32" in str(err.value) and reason in str(err.value)


def test_missing_env_var_is_named_not_its_value():
    with pytest.raises(ConfigError, match="environment variable SECRET_URL is not set"):
        parse_agents('[[agents]]\nid = "a"\nkind = "n8n"\nurl = "${SECRET_URL}"\n', "a.toml", env={})


def test_no_agents_and_openai_without_model():
    with pytest.raises(ConfigError, match="no agents"):
        parse_agents("[routing]\n", "a.toml", env={})
    with pytest.raises(ConfigError, match="needs model"):
        parse_agents('[[agents]]\nid = "a"\nkind = "openai"\nurl = "http://h/v1/chat/completions"\n', "a.toml", env={})


def test_bad_url_error_does_not_leak_the_url():
    with pytest.raises(ConfigError) as err:
        parse_agents('[[agents]]\nid = "a"\nkind = "n8n"\nurl = "nota url with KEY123"\n', "a.toml", env={})
    assert "KEY123" not in str(err.value)
