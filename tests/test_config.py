import pytest

from voxbridge.config import ConfigError, explain, load_settings


def test_defaults_match_the_shipped_example():
    from pathlib import Path

    example = load_settings(Path(__file__).parent.parent / "config" / "voxbridge.toml", env={})
    assert example == load_settings(env={})


def test_env_overrides_with_types():
    s = load_settings(
        env={
            "VOXBRIDGE_VAD__SILENCE_MS": "600",
            "VOXBRIDGE_PLAYBACK__BARGE_IN": "off",
            "VOXBRIDGE_STT__MODEL": "small.en",
        }
    )
    assert s.vad.silence_ms == 600
    assert s.playback.barge_in is False
    assert s.stt.model == "small.en"


@pytest.mark.parametrize(
    ("text", "env", "where", "reason"),
    [
        ("[vad]\nsilence_ms = -5\n", {}, "[vad].silence_ms", "must be > 0"),
        ("[vad]\nthreshold = 'high'\n", {}, "[vad].threshold", "expected a number"),
        ("[stt]\nmodle = 'x'\n", {}, "[stt].modle", "unknown setting"),
        ("[sttt]\n", {}, "[sttt]", "unknown section"),
        ("", {"VOXBRIDGE_VAD__THRESHOLD": "2"}, "VOXBRIDGE_VAD__THRESHOLD", "between 0 and 1"),
        (
            "",
            {"VOXBRIDGE_STT__MAX_CONCURRENT_TRANSCRIPTIONS": "many"},
            "VOXBRIDGE_STT__MAX_CONCURRENT_TRANSCRIPTIONS",
            "expected an integer",
        ),
        ("[vad]\nearly_ms = 900\n", {}, "[vad].early_ms", "must be < silence_ms"),
        ("[vad\n", {}, "voxbridge.toml:1", "invalid TOML"),
        ("[stt]\ndevice = 'tpu'\n", {}, "[stt].device", "must be one of"),
    ],
)
def test_invalid_values_name_the_key_and_reason(tmp_path, text, env, where, reason):
    path = tmp_path / "voxbridge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env=env)
    assert where in str(err.value)
    assert reason in str(err.value)


def test_explain_documents_every_setting():
    text = explain()
    assert "VOXBRIDGE_VAD__SILENCE_MS" in text
    assert "max_concurrent_transcriptions" in text


def test_pathological_toml_is_a_config_error(tmp_path):
    path = tmp_path / "voxbridge.toml"
    path.write_text("a = " + "[" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply|invalid TOML"):
        load_settings(path, env={})
