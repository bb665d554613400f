"""The prefork child's shared-memory slot and pipe channel, without a worker."""

from __future__ import annotations

import os

import pytest

from conveyor.worker.prefork import _Channel, _Slot


def _record(body: bytes = b"{}") -> tuple[object, ...]:
    return (body, "default", "r1", 1, "m1", "t1", "proj.add", False, None, 123.0)


def test_slot_shows_the_running_job_to_another_process_and_counts_what_ended() -> None:
    slot = _Slot()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        assert slot.start(_record())
        slot.finish(failed=False)
        assert slot.start(_record(b'{"x": 1}'))
        os._exit(0)
    os.waitpid(pid, 0)
    processed, failed, job = slot.read()
    assert (processed, failed) == (1, 0) == slot.counts()
    assert job is not None and job.task_id == "t1" and job.delivery.body == b'{"x": 1}'
    assert job.started_at == 123.0
    slot.close()


def test_a_torn_write_reads_as_no_job_and_a_too_big_job_is_refused() -> None:
    slot = _Slot()
    assert slot.start(_record())
    # A child killed half-way through a write leaves the sequence odd: that task had
    # not started, so nothing is running.
    slot._HEADER.pack_into(slot._mem, 0, 7, 0, 0, 10)
    assert slot.read()[2] is None
    assert not slot.start(_record(b"x" * _Slot.SIZE))
    slot.close()


def test_channel_carries_messages_larger_than_a_pipe_buffer_and_ends_with_eof() -> None:
    reader, writer = _Channel.pipe()
    big = b"y" * 200_000
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        reader.close()
        writer.send(("start", big))
        writer.send(("applied", 3))
        os._exit(0)
    writer.close()
    assert reader.recv() == ("start", big)
    assert reader.recv() == ("applied", 3)
    os.waitpid(pid, 0)
    assert reader.poll()
    with pytest.raises(EOFError):
        reader.recv()
    reader.close()
