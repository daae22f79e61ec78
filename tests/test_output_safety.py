"""Seeds and stored texts never carry control characters to a terminal, and CSV cells never
start a spreadsheet formula: seeds are cleaned where they enter (CLI, API, settings), what is
printed is escaped, and formula-like CSV cells are prefixed with a quote."""

from __future__ import annotations

import csv
import io

import httpx
import pytest
from webhome import make_home, running_server, settings_of

from tweetgen import cli, corpus, engine
from tweetgen.store import Store, utc_now

# A terminal title change, a colour, a screen clear, a bell and a NUL: what a hostile seed holds.
HOSTILE_SEED = "\x1b]0;owned\x07hi \x1b[31mred\x1b[2J\x00 \x9b1m"
CONTROL_FREE = corpus.CONTROL


def has_control(text: str | None) -> bool:
    return text is not None and CONTROL_FREE.search(text) is not None


def sample_row(text: str, seed: str, **fields) -> dict:
    return {"text": text, "seed": seed, "temperature": 0.8, "top_k": 0, "checkpoint_id": 1,
            "checkpoint_step": 20, "mean_logprob": -2.5, "copied": False, "novelty": 1.0,
            "source": "scheduled", "mode": "continue", "ended": "eos", **fields}


# ---------------------------------------------------------------- the pure functions


def test_clean_seed_replaces_each_control_character_with_a_space() -> None:
    from tweetgen.corpus import clean_seed

    assert clean_seed("a\x1b[1mb\nc\td\x00e\x7ff\x85g") == "a [1mb c d e f g"
    assert clean_seed(HOSTILE_SEED).__len__() == len(HOSTILE_SEED)  # one for one: limits hold
    assert not has_control(clean_seed(HOSTILE_SEED))
    assert clean_seed("The ") == "The "  # an ordinary seed, trailing space included, unchanged


def test_terminal_safe_escapes_control_characters_visibly() -> None:
    assert cli.terminal_safe("a\x1b[31mb\x07\x9b") == "a\\x1b[31mb\\x07\\x9b"
    assert cli.terminal_safe("snake 🐍 שלום") == "snake 🐍 שלום"


@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
    ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
    ("a = b", "a = b"), ("", ""), ("\tline", "\\x09line"), (-2.5, -2.5), (None, None), (7, 7),
])
def test_csv_cells_never_start_a_formula(value, cell) -> None:
    assert cli.csv_cell(value) == cell


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("output-safety") / "home")


def run(settings, capsys, *args: str) -> str:
    capsys.readouterr()
    assert cli.main(["--home", str(settings.home), *args]) == 0
    return capsys.readouterr().out


def test_cli_generate_cleans_the_seed_it_stores_and_prints(settings, capsys) -> None:
    since = utc_now()
    out = run(settings, capsys, "generate", "--seed", HOSTILE_SEED, "-n", "2", "--random-seed", "1")
    assert not has_control(out.replace("\n", ""))
    with Store(settings.db_file) as store:
        rows = store.query_samples(since=since)  # this command's rows (selection may keep fewer)
    assert rows and {row["source"] for row in rows} == {"cli"}
    for row in rows:
        assert not has_control(row["seed"]) and not has_control(row["text"])
        assert row["text"].startswith(row["seed"]) and row["seed"].startswith(" ]0;owned hi")


def test_the_api_cleans_the_seed(settings) -> None:
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        for mode in ("continue", "reply"):
            response = http.post("/api/generate", json={"seed": HOSTILE_SEED, "n": 1, "mode": mode})
            assert response.status_code == 200, response.text
            [tweet] = response.json()["tweets"]
            assert not has_control(tweet["seed"]) and not has_control(tweet["text"])
            with Store(settings.db_file) as store:
                stored = store.get_sample(tweet["id"])
            source = "on-demand" if mode == "continue" else "chat"  # a reply is a chat turn
            assert stored["seed"] == tweet["seed"] and stored["source"] == source


def test_seeds_from_the_settings_are_cleaned(settings) -> None:
    hostile = settings_of(settings.home, seeds=[HOSTILE_SEED, "the"], samples_per_seed=3,
                          temperatures=[1.0])
    with Store(settings.db_file) as store:
        since = utc_now()
        engine.generate_scheduled(hostile, store, None)
        # This job's rows only: candidate selection may keep fewer than asked ("fewer tweets
        # rather than weaker ones"), so "the newest two" could include an earlier test's rows.
        rows = store.query_samples(since=since)
    assert rows and {row["source"] for row in rows} == {"scheduled"}
    assert {row["seed"] for row in rows} <= {corpus.clean_seed(HOSTILE_SEED), "the"}
    assert not any(has_control(row["seed"]) or has_control(row["text"]) for row in rows)


def test_tweets_escapes_stored_control_characters_and_formula_cells(settings, capsys) -> None:
    """Rows stored before seeds were cleaned (or written by hand) still print safely."""
    with Store(settings.db_file) as store:
        store.add_samples([sample_row("\x1b]0;owned\x07 title", "\x1b[2J", status="approved"),
                           sample_row("=HYPERLINK(\"http://evil.example\",\"click\")", "=1+1",
                                      status="approved")])
    table = run(settings, capsys, "tweets", "--status", "approved")
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]0;owned\\x07 title" in table

    out = run(settings, capsys, "tweets", "--status", "approved", "--format", "csv")
    assert not has_control(out.replace("\r\n", "").replace("\n", ""))
    rows = list(csv.DictReader(io.StringIO(out)))
    by_text = {row["text"]: row for row in rows}
    formula = by_text["'=HYPERLINK(\"http://evil.example\",\"click\")"]
    assert formula["seed"] == "'=1+1"
    assert formula["mean_logprob"] == "-2.5"  # numbers are numbers, not formulas
    assert by_text["\\x1b]0;owned\\x07 title"]["seed"] == "\\x1b[2J"
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row.values())


def test_the_review_command_prints_texts_safely(settings, capsys, monkeypatch) -> None:
    with Store(settings.db_file) as store:
        store.add_samples([sample_row("\x1b[5mblink\x1b[0m", "x")])
    monkeypatch.setattr("builtins.input", lambda _prompt: "s")  # skip each
    out = run(settings, capsys, "review", "--interactive")
    assert "\x1b" not in out and "\\x1b[5mblink" in out

