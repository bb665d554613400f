"""Lease receipts start with a per-process tag: a forked child must not reuse its parent's."""

from __future__ import annotations

import os

from conveyor import _redis
from conveyor.brokers.redis import _token


def test_a_forked_child_gets_its_own_tag_and_tokens() -> None:
    parent_tag = _redis.process_tag()
    assert parent_tag == _redis.process_tag()  # stable within a process
    first, second = _token(), _token()
    assert first != second and first.startswith(parent_tag + ".")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its tag and a token, then leave at once
        try:
            os.write(write, f"{_redis.process_tag()} {_token()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    child_tag, child_token = os.read(read, 200).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_tag != parent_tag
    assert child_token.startswith(child_tag + ".")
    assert _redis.process_tag() == parent_tag  # the parent keeps its own
