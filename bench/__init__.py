"""Benchmarks: each compares echocmr against the plain way a user would otherwise do it."""
