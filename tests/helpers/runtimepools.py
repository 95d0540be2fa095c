"""The two one-worker pools (reverse and hash) that the runtime tests' farms start with."""

from __future__ import annotations

FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1

[functions.hash]
target = "workers.hashing:pbkdf2"
workers = 1
"""
