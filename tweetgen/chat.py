"""`tweetgen chat`: type a line, get a tweet back.

In reply mode (the default) the model answers your line with the context it was trained with
(tweetgen.context: `<eos> message <sep>` for a model trained with context, else your line read
as the line before). The chat remembers the last turn: the message is the bot's previous reply
followed by your line (`reply_message`), cut from the left to what the model was trained to read,
so the end, your line, is always whole; `/new` forgets it. `/continue` switches to tweets that
start with what you typed. Every reply is stored like a tweet, source `chat` (reviewable on the
review page and with `tweetgen tweets`). The promoted checkpoint is loaded here (no daemon
needed), and reloaded when the daemon promotes another.
"""

from __future__ import annotations

import math

from .config import Settings
from .errors import GenerationError

HELP = ("type a line and press Enter; /reply: answer it, /continue: start the tweet with it, "
        "/new: forget the conversation, /temp 0.7: set the temperature, /help, /quit (or Ctrl-D)")
SOURCE = "chat"  # the stored replies' source


def reply_message(previous: str, line: str) -> str:
    """What a reply answers: the previous turn (the bot's last reply, if any) and the new line.
    The generator keeps the message's end (context.reply_prefix), so the line comes last."""
    return f"{previous} {line}" if previous else line


class ChatSession:
    """The conversation's state: the mode and temperature that the /commands change."""

    def __init__(self, temperature: float = 0.8, mode: str = "reply") -> None:
        self.temperature = temperature
        self.mode = mode
        self.done = False
        self.previous = ""  # the bot's last reply: the turn the next line follows

    def message(self, line: str) -> str:
        """What the model is given for `line`: in reply mode, with the previous turn."""
        return reply_message(self.previous, line) if self.mode == "reply" else line

    def command(self, line: str) -> str:
        """Answer a /command line."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name == "quit":
            self.done = True
            return "bye"
        if name in ("reply", "continue"):
            self.mode = name
            return f"mode: {name}"
        if name == "new":
            self.previous = ""
            return "new conversation"
        if name == "temp":
            try:
                value = float(arg)
            except ValueError:
                value = math.nan
            if not (value > 0 and math.isfinite(value)):
                return f"error: /temp needs a number > 0, e.g. /temp 0.7 (got {arg!r})"
            self.temperature = value
            return f"temperature: {value:g}"
        if name == "help":
            return HELP
        return f"error: unknown command /{name}; {HELP}"


def run_chat(settings: Settings, temperature: float = 0.8, mode: str = "reply") -> int:
    """The interactive loop on standard input; returns the exit status."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise GenerationError(f"--temperature must be > 0, got {temperature}")
    import readline  # noqa: F401  (line editing and history for input())

    from .engine import GeneratorCache
    from .store import Store

    session = ChatSession(temperature, mode)
    cache = GeneratorCache(settings)
    _, ckpt = cache.get()
    print(f"chatting with {ckpt.name} (step {ckpt.step}); {HELP}", flush=True)
    with Store(settings.db_file, settings.db_busy_timeout_seconds) as store:
        _converse(settings, session, cache, store)
    return 0


def _converse(settings: Settings, session: ChatSession, cache, store) -> None:
    from .engine import generate_on_demand
    from .store import StoreError

    while not session.done:
        try:
            line = input(f"{session.mode} T={session.temperature:g}> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not line:
            continue
        if line.startswith("/"):
            print(session.command(line), flush=True)
            continue
        generator, ckpt = cache.get()
        try:
            made = generate_on_demand(settings, generator, ckpt, store, [session.message(line)], 1,
                                      session.temperature, mode=session.mode, source=SOURCE)
        except (GenerationError, StoreError) as exc:
            print(f"error: {exc}", flush=True)
            continue
        if not made.candidates:
            print("bot: (no reply passed the selection; try again)", flush=True)
            continue
        text = made.candidates[0].sample.text
        session.previous = text if session.mode == "reply" else ""
        print(f"bot: {text}", flush=True)
