"""tweetgen: a self-hosted character-level GRU tweet generator."""

# Load Python's SQLite module before anything imports TensorFlow: TensorFlow's libraries carry
# their own SQLite build (without FTS5), and once they are loaded first the `sqlite3` module binds
# to it, so every write to the samples' full-text index fails with "no such module: fts5".
import sqlite3  # noqa: F401
