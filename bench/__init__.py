"""Benchmarks for tweetgen (`python -m bench.engine`)."""
