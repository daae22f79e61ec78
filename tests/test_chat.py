"""`tweetgen chat` driven through a real pseudo-terminal, as a person at a terminal would."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from webhome import make_home

TIMEOUT_S = 60


class Terminal:
    """A process on the slave side of a pty; we type and read on the master side."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        env = dict(os.environ, TERM="dumb", TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen([sys.executable, "-m", "tweetgen.cli", *args], stdin=slave,
                                        stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.fd = master
        self.screen = ""
        self.seen = 0  # expect() looks only at what came after the last match

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the process closed the terminal
            return False
        self.screen += data.decode("utf-8", "replace")
        return bool(data)

    def expect(self, pattern: str, timeout: float = TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.screen, self.seen)
            if found:
                self.seen = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.screen[self.seen:]}")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")  # Enter

    def close(self) -> int:
        try:
            return self.process.wait(timeout=TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.fd)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("chat") / "home")


def test_chat_replies_switches_mode_and_temperature_then_quits(settings):
    term = Terminal("chat", "--home", str(settings.home))
    try:
        term.expect(r"chatting with ckpt-00000020\.npz \(step 20\)")
        term.expect(r"reply T=0\.8> ")
        term.type("the cat sat on the mat")
        reply = term.expect(r"bot: (.*?)\r\n").group(1)
        assert len(reply) <= settings.max_tweet_chars
        assert not reply.startswith("the cat sat on the mat")  # an answer, not a continuation

        term.type("/temp 0.5")
        term.expect(r"temperature: 0\.5\r\n")
        term.expect(r"reply T=0\.5> ")
        term.type("/temp hot")
        term.expect(r"error: /temp needs a number > 0, e\.g\. /temp 0\.7 \(got 'hot'\)")
        term.type("/temp -1")
        term.expect(r"error: /temp needs a number > 0")
        term.expect(r"reply T=0\.5> ")

        term.type("/continue")
        term.expect(r"mode: continue\r\n")
        term.expect(r"continue T=0\.5> ")
        term.type("the c")
        assert term.expect(r"bot: (.*?)\r\n").group(1).startswith("the c")

        term.type("/bogus")
        term.expect(r"error: unknown command /bogus")
        term.type("/reply")
        term.expect(r"mode: reply")
        term.type("/quit")
        term.expect(r"bye")
    finally:
        status = term.close()
    assert status == 0


def test_chat_ends_on_ctrl_d(settings):
    term = Terminal("chat", "--home", str(settings.home), "--mode", "continue", "--temperature", "1.2")
    try:
        term.expect(r"continue T=1\.2> ")
        os.write(term.fd, b"\x04")  # Ctrl-D: end of input
    finally:
        status = term.close()
    assert status == 0


def test_chat_without_a_checkpoint_says_what_to_do(tmp_path):
    term = Terminal("chat", "--home", str(tmp_path))
    try:
        line = term.expect(r"tweetgen: error: (.*?)\r\n").group(1)
    finally:
        status = term.close()
    assert status == 2
    assert "no usable checkpoint" in line and "tweetgen train" in line


def test_chat_refuses_a_bad_temperature(settings):
    term = Terminal("chat", "--home", str(settings.home), "--temperature", "0")
    try:
        term.expect(r"tweetgen: error: --temperature must be > 0, got 0\.0\r\n")
    finally:
        status = term.close()
    assert status == 2


def pair_lines() -> list[str]:
    """A dialog corpus: each question line answered by a reply of other words."""
    from webhome import WORDS

    lines = []
    for i in range(60):
        question = " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(2 + i % 3))
        answer = " ".join(WORDS[(i * 7 + j * 2 + 1) % len(WORDS)] for j in range(3 + i % 4))
        lines.append(f"{question}?\t{answer}")
    return lines * 4


def test_chat_with_a_context_trained_model_remembers_the_last_turn_and_stores_replies(tmp_path):
    import sqlite3

    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.vocab import Vocab

    settings = make_home(tmp_path / "home", 'context_mode = "pairs"\n', lines=pair_lines())
    meta = CheckpointManager(settings.checkpoints).load_latest().meta
    assert meta["context_mode"] == "pairs" and meta["val_reply_bpc"] is not None
    assert Vocab.from_json(meta["vocab"]).sep_id is not None

    term = Terminal("chat", "--home", str(settings.home))
    said = ["the cat sat?", "on the mat?", "/new", "the dog ran?"]
    replies = []
    try:
        term.expect(r"reply T=0\.8> ")
        for line in said:
            term.type(line)
            if line == "/new":
                term.expect(r"new conversation\r\n")
            else:
                replies.append(term.expect(r"bot: (.*?)\r\n").group(1))
        term.type("/quit")
        term.expect("bye")
    finally:
        status = term.close()
    assert status == 0

    with sqlite3.connect(settings.db_file) as db:
        rows = db.execute("SELECT text, seed, mode, status FROM samples WHERE source = 'chat' "
                          "ORDER BY id").fetchall()
    answered = [r for r in replies if not r.startswith("(no reply passed")]
    assert [row[0] for row in rows] == answered and len(answered) >= 2
    # Each reply answers the bot's previous reply followed by the new line; /new forgets it.
    expected_seeds, previous = [], ""
    for line, reply in zip([s for s in said if s != "/new"], replies):
        if line == "the dog ran?":
            previous = ""
        if not reply.startswith("(no reply passed"):
            expected_seeds.append(f"{previous} {line}" if previous else line)
            previous = reply
    assert [row[1] for row in rows] == expected_seeds
    assert all(row[2] == "reply" and row[3] == "new" for row in rows)
