"""`tweetgen chat`: type a line, get a tweet back.

In reply mode (the default) the model reads your line as the previous one and writes the next
tweet after it; `/continue` switches to tweets that start with what you typed. The promoted
checkpoint is loaded here (no daemon needed), and reloaded when the daemon promotes another.
"""

from __future__ import annotations

import math

from .config import Settings
from .errors import GenerationError

HELP = ("type a line and press Enter; /reply: answer it, /continue: start the tweet with it, "
        "/temp 0.7: set the temperature, /help, /quit (or Ctrl-D)")


class ChatSession:
    """The conversation's state: the mode and temperature that the /commands change."""

    def __init__(self, temperature: float = 0.8, mode: str = "reply") -> None:
        self.temperature = temperature
        self.mode = mode
        self.done = False

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

    session = ChatSession(temperature, mode)
    cache = GeneratorCache(settings)
    _, ckpt = cache.get()
    print(f"chatting with {ckpt.name} (step {ckpt.step}); {HELP}", flush=True)
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
        generator, _ = cache.get()
        try:
            (sample,) = generator.generate([line], 1, session.temperature, mode=session.mode)
        except GenerationError as exc:
            print(f"error: {exc}", flush=True)
            continue
        print(f"bot: {sample.text}", flush=True)
    return 0
