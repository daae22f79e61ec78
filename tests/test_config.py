"""Settings: defaults, then tweetgen.toml, then TWEETGEN_* environment, then command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tweetgen.config import ConfigError, Settings, apply, env_values, load_settings


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(environ={}, overrides={"home": str(tmp_path)})
    assert s.gru_sizes == (128, 256)
    assert s.input_mode == "embedding"
    assert s.max_tweet_chars == 140
    assert 0 < s.validation_fraction < 0.5
    assert s.source == "defaults"
    assert s.corpus_file == tmp_path / "data" / "corpus.txt"
    assert s.checkpoints == tmp_path / "checkpoints"
    assert s.db_file == tmp_path / "db" / "tweetgen.db"
    assert s.model_config() == {"input_mode": "embedding", "embedding_dim": 64,
                                "gru_sizes": [128, 256], "dropout": 0.1}


def test_toml_under_home_is_read(tmp_path: Path) -> None:
    write_toml(tmp_path / "tweetgen.toml", 'gru_sizes = [16, 32]\nbatch_size = 8\n'
               'learning_rate = 1\ninput_mode = "onehot"\nseeds = ["a", ""]\n'
               'corpus_path = "other/lines.txt"\n')
    s = load_settings(environ={}, overrides={"home": str(tmp_path)})
    assert s.gru_sizes == (16, 32)
    assert s.batch_size == 8
    assert s.learning_rate == 1.0 and isinstance(s.learning_rate, float)
    assert s.input_mode == "onehot"
    assert s.seeds == ("a", "")
    assert s.corpus_file == tmp_path / "other" / "lines.txt"
    assert s.source == str(tmp_path / "tweetgen.toml")


def test_toml_under_a_tweetgen_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "conf.toml", "[tweetgen]\nembedding_dim = 12\n")
    s = load_settings(path, environ={})
    assert s.embedding_dim == 12


def test_home_from_the_environment_finds_its_toml(tmp_path: Path) -> None:
    write_toml(tmp_path / "tweetgen.toml", "batch_size = 5\n")
    s = load_settings(environ={"TWEETGEN_HOME": str(tmp_path)})
    assert s.batch_size == 5
    assert s.checkpoints == tmp_path / "checkpoints"


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "x.toml", "batch_size = 7\n")
    assert load_settings(environ={"TWEETGEN_CONFIG": str(path)}).batch_size == 7


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    write_toml(tmp_path / "tweetgen.toml", "batch_size = 8\nembedding_dim = 12\ndropout = 0.2\n")
    environ = {"TWEETGEN_HOME": str(tmp_path), "TWEETGEN_EMBEDDING_DIM": "20",
               "TWEETGEN_DROPOUT": "0.3", "TWEETGEN_GRU_SIZES": "16,24",
               "TWEETGEN_TEMPERATURES": "0.5, 1.5"}
    s = load_settings(environ=environ, overrides={"dropout": 0.4, "initial_steps": None})
    assert s.batch_size == 8  # TOML over the default
    assert s.embedding_dim == 20  # env over TOML
    assert s.dropout == 0.4  # flag over env
    assert s.initial_steps == Settings().initial_steps  # a flag left as None changes nothing
    assert s.gru_sizes == (16, 24)
    assert s.temperatures == (0.5, 1.5)


def test_env_values_picks_only_known_settings() -> None:
    environ = {"TWEETGEN_BATCH_SIZE": "3", "TWEETGEN_NOPE": "1", "PATH": "/bin"}
    assert env_values(environ) == {"batch_size": "3"}


def test_unknown_key_in_toml_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "tweetgen.toml", "batch_sise = 8\n")
    with pytest.raises(ConfigError, match="batch_sise") as info:
        load_settings(environ={}, overrides={"home": str(tmp_path)})
    assert str(path) in str(info.value)


def test_removed_settings_are_named_in_a_warning_and_ignored(tmp_path: Path, caplog) -> None:
    write_toml(tmp_path / "tweetgen.toml", "lr_decay_rate = 0.5\nlr_decay_steps = 4000\nbatch_size = 8\n")
    settings = load_settings(environ={"TWEETGEN_LR_DECAY_STEPS": "10"}, overrides={"home": str(tmp_path)})
    assert settings.batch_size == 8
    warnings = [r.getMessage() for r in caplog.records if "no longer used" in r.getMessage()]
    assert len(warnings) == 3 and all("planned length" in w for w in warnings)
    assert any("tweetgen.toml" in w and "lr_decay_rate" in w for w in warnings)
    assert any("environment" in w and "lr_decay_steps" in w for w in warnings)


def test_unknown_flag_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'warp'"):
        apply(Settings(), {"warp": 9}, "command line")


@pytest.mark.parametrize("text, name", [
    ('batch_size = "big"', "batch_size"),
    ("batch_size = 2.5", "batch_size"),
    ("batch_size = true", "batch_size"),
    ('learning_rate = "fast"', "learning_rate"),
    ("input_mode = 3", "input_mode"),
    ("gru_sizes = 32", "gru_sizes"),
    ('gru_sizes = ["a", "b"]', "gru_sizes"),
    ("corpus_path = 5", "corpus_path"),
])
def test_wrong_type_in_toml_is_an_error_naming_the_setting(tmp_path: Path, text: str, name: str) -> None:
    write_toml(tmp_path / "tweetgen.toml", text + "\n")
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={}, overrides={"home": str(tmp_path)})


def test_wrong_type_in_env_is_an_error_naming_the_origin() -> None:
    with pytest.raises(ConfigError, match="environment.*batch_size"):
        load_settings(environ={"TWEETGEN_BATCH_SIZE": "lots"})


@pytest.mark.parametrize("values, words", [
    ({"input_mode": "bag"}, "input_mode"),
    ({"gru_sizes": []}, "gru_sizes"),
    ({"gru_sizes": [0]}, "gru_sizes"),
    ({"dropout": 1.0}, "dropout"),
    ({"validation_fraction": 0.0}, "validation_fraction"),
    ({"batch_size": 0}, "batch_size"),
    ({"temperatures": [0.0]}, "temperatures"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"lr_schedule": "exponential", "min_learning_rate": 0.0}, "min_learning_rate"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps"),
])
def test_invalid_values_are_errors(values: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        apply(Settings(), values, "test")


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "bad.toml", "batch_size = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_as_dict_is_plain_data(tmp_path: Path) -> None:
    import json

    data = Settings(home=tmp_path).as_dict()
    assert data["gru_sizes"] == [128, 256] and data["home"] == str(tmp_path)
    assert "source" not in data
    json.dumps(data)
    # Round trip: the dict applied to defaults gives the same settings.
    assert apply(Settings(), data, "round trip").as_dict() == data


# ---- issue 13 item 7: no silent coercion, a grace time APScheduler accepts


@pytest.mark.parametrize("text, name", [
    ("gru_sizes = [128.9]", "gru_sizes"),  # was coerced to 128
    ("seeds = [1, 2]", "seeds"),  # was coerced to '1', '2'
    ("temperatures = [true]", "temperatures"),
    ('workers = [8080]', "workers"),
    ("misfire_grace_seconds = 0", "misfire_grace_seconds"),  # APScheduler 3.x crashed at start
    ("misfire_grace_seconds = 1.5", "misfire_grace_seconds"),
])
def test_wrong_list_items_and_grace_time_are_one_line_errors(tmp_path: Path, text: str, name: str) -> None:
    path = write_toml(tmp_path / "tweetgen.toml", text + "\n")
    with pytest.raises(ConfigError, match=name) as info:
        load_settings(environ={}, overrides={"home": str(tmp_path)})
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_list_settings_from_the_environment_are_parsed_strictly() -> None:
    s = load_settings(environ={"TWEETGEN_GRU_SIZES": "16,24", "TWEETGEN_SEEDS": "a,,b"})
    assert s.gru_sizes == (16, 24) and s.seeds == ("a", "", "b")
    with pytest.raises(ConfigError, match="environment: setting 'gru_sizes' must be a list of int"):
        load_settings(environ={"TWEETGEN_GRU_SIZES": "16,24.5"})


# ---- issue 16 item 1: typos get a "did you mean"; sources are known


def test_unknown_toml_key_says_did_you_mean(tmp_path: Path) -> None:
    write_toml(tmp_path / "tweetgen.toml", "initial_step = 8\n")
    with pytest.raises(ConfigError, match="unknown setting 'initial_step'; did you mean 'initial_steps'"):
        load_settings(environ={}, overrides={"home": str(tmp_path)})


def test_unknown_env_variable_is_warned_with_the_closest_name(caplog) -> None:
    environ = {"TWEETGEN_INITIAL_STEP": "5", "TWEETGEN_ZZZ": "1", "TWEETGEN_CONFIG_X": "",
               "TWEETGEN_FAULT_KILL_AT": "x", "TWEETGEN_BATCH_SIZE": "4", "PATH": "/bin"}
    with caplog.at_level("WARNING", logger="tweetgen.config"):
        s = load_settings(environ=environ)
    assert s.batch_size == 4 and s.initial_steps == Settings().initial_steps
    warned = [r.getMessage() for r in caplog.records]
    assert ("environment variable TWEETGEN_INITIAL_STEP is not a tweetgen setting and is ignored; "
            "did you mean TWEETGEN_INITIAL_STEPS?") in warned
    assert any(w.startswith("environment variable TWEETGEN_ZZZ ") and "did you mean" not in w
               for w in warned)
    assert not any("FAULT" in w or "BATCH_SIZE" in w for w in warned)


def test_sources_and_corpus_origin_are_recorded(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "tweetgen.toml", 'corpus_path = "mine.txt"\nbatch_size = 8\n')
    s = load_settings(environ={"TWEETGEN_DROPOUT": "0.2"}, overrides={"home": str(tmp_path)})
    assert s.corpus_set_by == str(toml)
    assert s.describe_sources() == (f"defaults, then {toml} (batch_size, corpus_path), "
                                    "then environment (dropout), then command line (home)")
    assert load_settings(environ={}).corpus_set_by is None
    explicit_default = load_settings(environ={"TWEETGEN_CORPUS_PATH": "data/corpus.txt"})
    assert explicit_default.corpus_set_by is None  # the default path: fortunes when missing
