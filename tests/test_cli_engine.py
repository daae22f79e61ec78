"""The engine's commands as a user runs them: real `tweetgen` processes on a tiny model.

Every process that touches the model starts TensorFlow (about 5 s), so the commands are chained
in a few tests over one home rather than one test per flag.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PATTERNS, varied_lines

from tweetgen import corpus

TOML = """\
gru_sizes = [16, 32]
embedding_dim = 8
batch_size = 8
dropout = 0.0
vocab_min_count = 1
learning_rate = 0.01
log_every = 10
checkpoint_every = 1000
"""


def run_cli(home: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWEETGEN_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    script = Path(sys.executable).with_name("tweetgen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tweetgen.cli"]
    proc = subprocess.run([*command, "--home", str(home), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=home)
    assert proc.returncode == expect, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def fortune_file(path: Path) -> Path:
    # Some lines that are sure to fall in the validation split, so validation is never empty.
    validation = [line for line in varied_lines(400) if corpus.is_validation(line)][:4]
    entries = list(PATTERNS) * 5 + varied_lines(36) + validation + ["y" * 141, "  spaced\n   out\tentry  "]
    path.write_text("\n%\n".join(entries) + "\n%\n")
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cli-home")
    (home / "tweetgen.toml").write_text(TOML)
    return home


def test_import_fortunes(home: Path, tmp_path_factory) -> None:
    source = fortune_file(tmp_path_factory.mktemp("src") / "fortunes")
    proc = run_cli(home, "import-fortunes", str(source), "--json")
    assert json.loads(proc.stdout) == {"added": 20 + 40 + 1, "rejected": {}}
    assert "imported 61 of 62 fortune entries" in proc.stderr
    lines = corpus.read_lines(home / "data" / "corpus.txt").lines
    assert "spaced out entry" in lines and "y" * 141 not in lines
    assert max(len(line) for line in lines) <= 140


def test_generate_before_training_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "generate", "--seed", "a", expect=2)
    assert "no usable checkpoint" in proc.stderr and "tweetgen train" in proc.stderr
    assert "no daemon is running" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # a read leaves no empty checkpoints/ (nor db/) behind


def test_train_continue_generate_eval(home: Path, tmp_path: Path) -> None:
    proc = run_cli(home, "train", "--steps", "30", "--json")
    first = json.loads(proc.stdout)
    assert first["steps"] == 30 and first["step"] == 30 and first["status"] == "completed"
    assert Path(first["checkpoint"]).name == "ckpt-00000030.npz"
    assert math.isfinite(first["train_loss"]) and math.isfinite(first["val_bpc"])
    # Plain progress lines when not on a terminal, the loss in bits/char like validation, and no
    # ETA at the last step.
    assert re.search(r"step 30/30: training loss \d\.\d{4} bits/char, lr [\d.e-]+, [\d,]+ chars/s\n",
                     proc.stderr)
    assert "oneDNN custom operations" not in proc.stderr  # TensorFlow's start-up lines, unless -v
    assert "train_bpc" in first and first["train_bpc"] == pytest.approx(first["train_loss"] / math.log(2))

    # A second run continues from the latest checkpoint.
    second = json.loads(run_cli(home, "train", "--steps", "20", "--json").stdout)
    assert second["steps"] == 20 and second["step"] == 50
    assert second["train_loss"] < first["train_loss"] + 0.5
    assert sorted(p.name for p in (home / "checkpoints").glob("ckpt-*.npz"))[-1] == "ckpt-00000050.npz"

    # Runs and losses for people: 4 decimals with the unit, promoted or not; exact in --json.
    runs = run_cli(home, "runs").stdout
    assert re.search(r"#2 train completed, started \S+, steps 20, validation - -> \d\.\d{4} bits/char, "
                     r"promoted -\n#1 train completed", runs), runs
    assert not re.search(r"\d\.\d{5}", runs)
    exact = json.loads(run_cli(home, "runs", "--json").stdout)[0]["val_bpc_after"]
    assert exact == second["val_bpc"] and f"{exact:.4f} bits/char" in runs
    losses = run_cli(home, "losses", "--run", "1").stdout
    assert re.search(r"run 1 step +10 training loss \d\.\d{4} bits/char, lr ", losses)
    assert re.search(r"run 1 step +30 validation \d\.\d{4} bits/char", losses)

    args = ["generate", "--seed", "the c", "--seed", "", "-n", "3", "--temperature", "0.9",
            "--random-seed", "7", "--json", "--raw"]
    rows = json.loads(run_cli(home, *args).stdout)
    assert [r["seed"] for r in rows] == ["the c"] * 3 + [""] * 3
    for row in rows:
        assert row["text"].startswith(row["seed"]) and len(row["text"]) <= 140
        assert row["checkpoint"] == "ckpt-00000050.npz" and row["temperature"] == 0.9
        assert row["ended"] in ("eos", "limit") and isinstance(row["copied"], bool)
        assert 0.0 <= row["novelty"] <= 1.0 and row["mean_logprob"] <= 0.0
        assert isinstance(row["id"], int)
    with sqlite3.connect(home / "db" / "tweetgen.db") as db:
        stored = [r[0] for r in db.execute("select text from samples order by id")]
    assert stored == [r["text"] for r in rows]

    # A reply does not start with its seed: the text output names the seed each line answers.
    replies = run_cli(home, "generate", "--seed", "why?", "--seed", "", "--mode", "reply", "-n", "2",
                      "--no-store").stdout.splitlines()
    assert len(replies) == 4 and all(line.startswith("'why?' -> ") for line in replies[:2])
    assert all(line.startswith("'' -> ") for line in replies[2:])

    # The same request in this process, on the same checkpoint, gives the same tweets.
    from tweetgen import engine
    from tweetgen.config import load_settings

    settings = load_settings(overrides={"home": str(home)}, environ={})
    generator, ckpt = engine.open_generator(settings)
    assert ckpt.step == 50
    again = generator.generate(["the c", ""], 3, 0.9, 0, 7)
    assert [s.text for s in again] == [r["text"] for r in rows]

    # Without --raw each tweet is the best of candidates_per_tweet samples: no copy, no text
    # stored twice, the score stored with it.
    picked = json.loads(run_cli(home, *args[:-1]).stdout)
    assert 1 <= len(picked) <= 6 and "dropped" not in picked[0]
    texts = [r["text"] for r in picked]
    assert len(set(texts)) == len(texts) and not set(texts) & set(stored)
    with sqlite3.connect(home / "db" / "tweetgen.db") as db:
        for row in picked:
            score, candidates, copied = db.execute(
                "select score, candidates, copied from samples where id = ?", [row["id"]]).fetchone()
            assert score == pytest.approx(row["score"]) and candidates == 3 and copied == 0
    table = run_cli(home, "tweets", "--order", "score", "--limit", "3").stdout
    assert table.splitlines()[0].split()[:5] == ["id", "status", "temp", "novel", "score"]

    # eval: bits per character of any text file, the same cleaning as the corpus.
    text = tmp_path / "eval.txt"
    text.write_bytes(b"the cat sat on the mat\n\n\xff\xfe\nhello world\r\nthe dog \xe2\x98\x83\n")
    result = json.loads(run_cli(home, "eval", str(text), "--json").stdout)
    assert result["lines"] == 3 and result["rejected"] == 2
    assert result["unknown_chars"] == 1
    assert result["characters"] == len("the cat sat on the mat") + len("hello world") + len("the dog ☃") + 3
    assert result["checkpoint"] == "ckpt-00000050.npz" and result["step"] == 50
    assert 0 < result["bits_per_char"] < 8
    assert f"{result['bits_per_char']:.4f} bits/char over" in run_cli(home, "eval", str(text)).stdout
    # ...and agrees with the library on an older checkpoint by step number.
    older = json.loads(run_cli(home, "eval", str(text), "--checkpoint", "30", "--json").stdout)
    assert older["step"] == 30
    library = engine.evaluate_file(settings, text, "30")
    assert library["bits_per_char"] == pytest.approx(older["bits_per_char"], abs=1e-4)
