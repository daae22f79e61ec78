"""Context in training: a reply trained after the message it answers.

How corpus lines relate is the `context_mode` setting:

- `none`: every line is one text, trained as `<eos> text <eos>` (a pair's tab read as a space).
- `previous-line`: consecutive lines are turns: each line is also a reply to the line before it.
- `pairs`: a line `message<TAB>reply` is a dialog pair (`tweetgen import-dialog` writes them);
  a line without a tab is a single text.

With context on, a share of the examples that have a message (`context_share`, drawn with the
job's seed, so a resumed job draws the same) are trained as `<eos> message <sep> reply <eos>`,
the loss on the reply and its end only: the message and <sep> carry tweetgen.train's NO_LOSS
flag, weighted 0 like padding. The others are trained as their reply alone, `<eos> reply <eos>`,
like every single line, so the model still learns to write from a fresh start (continue mode).
A long message is cut from the left (its end, next to the reply, matters most) so the whole
sequence keeps to max_line_chars. Reply generation feeds the same prefix, `<eos> message <sep>`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .corpus import PAIR_SEP, plain_text
from .vocab import EOS, NO_LOSS, Vocab

MODES = ("none", "previous-line", "pairs")


@dataclass(frozen=True)
class Example:
    """One thing to train: `text`, and the message it replies to (None: a single text)."""

    text: str
    message: str | None = None

    def single(self) -> Example:
        return Example(self.text)


def examples(lines: Sequence[str], mode: str, consecutive: bool = True) -> list[Example]:
    """One example per corpus line, in order. `consecutive`: the lines are consecutive in the
    corpus (not a sample of it), so in previous-line mode each answers the one before it."""
    if mode == "pairs":
        return [_pair(line) for line in lines]
    texts = [plain_text(line) for line in lines]
    if mode == "previous-line" and consecutive:
        return [Example(text, texts[i - 1] if i else None) for i, text in enumerate(texts)]
    return [Example(text) for text in texts]


def _pair(line: str) -> Example:
    message, tab, reply = line.partition(PAIR_SEP)
    return Example(reply, message) if tab else Example(line)


def with_context_share(items: Sequence[Example], share: float, rng: random.Random) -> list[Example]:
    """Each example with a message keeps it with probability `share`; the rest become single.
    One draw per example, message or not, so the draws do not depend on the mode's pairing."""
    return [item if rng.random() < share else item.single() for item in items]


def replies(items: Sequence[Example]) -> list[Example]:
    """The examples that answer a message (what reply validation measures)."""
    return [item for item in items if item.message is not None]


def encode_example(item: Example, vocab: Vocab, max_chars: int) -> tuple[np.ndarray, int]:
    """The sequence of one example and its unknown-character count. A single text (or a reply
    that leaves no room for a message) is `<eos> text <eos>` (cut to max_chars, without the end
    when cut); a reply is `<eos> message <sep> reply <eos>`, the message cut from the left."""
    text = item.text[:max_chars]
    tail = [EOS] if len(item.text) <= max_chars else []
    ids, unknown = vocab.encode(text)
    room = max_chars - len(text) - 1
    if not item.message or room < 1 or vocab.sep_id is None:
        return np.concatenate([[EOS], ids, tail]).astype(np.int32), unknown
    message_ids, message_unknown = vocab.encode(item.message[-room:])
    read_only = np.concatenate([message_ids, [vocab.sep_id]]) + NO_LOSS
    return np.concatenate([[EOS], read_only, ids, tail]).astype(np.int32), unknown + message_unknown


def encode_examples(items: Sequence[Example], vocab: Vocab, max_chars: int) -> tuple[list[np.ndarray], int]:
    sequences, unknown = [], 0
    for item in items:
        sequence, n_unknown = encode_example(item, vocab, max_chars)
        sequences.append(sequence)
        unknown += n_unknown
    return sequences, unknown


def reply_prefix(message: str, vocab: Vocab, mode: str, max_chars: int,
                 reply_chars: int) -> tuple[np.ndarray, int]:
    """What reply generation feeds before the reply, and its unknown-character count: exactly
    the trained context. A model trained with context (`mode` from its checkpoint) reads
    `<eos> message <sep>`, the message cut from the left as in training for a reply of
    `reply_chars`; a model trained without it reads `<eos> message <eos>` (the message as the
    line before), the message's last max_chars characters."""
    if mode != "none" and vocab.sep_id is not None:
        room = max(max_chars - reply_chars - 1, 1)
        ids, unknown = vocab.encode(message[-room:])
        return np.concatenate([[EOS], ids, [vocab.sep_id]]).astype(np.int32), unknown
    ids, unknown = vocab.encode(message[-max_chars:])
    return np.concatenate([[EOS], ids, [EOS]]).astype(np.int32), unknown
