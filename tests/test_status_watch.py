"""``starburst status SID --watch``: the status redrawn until the session ends, without sleeps
(readings come from a list, the wait between them is a fake that counts)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from starburst_executor import cli
from starburst_executor._session import Session
from starburst_executor.config import secret_key
from starburst_executor.dashboard import watch as watch_module
from starburst_executor.dashboard.watch import watch
from starburst_executor.protocol import (
    Codec,
    ResultRecord,
    SessionManifest,
    SessionState,
    TaskOutcome,
)
from starburst_executor.serialization import dumps
from starburst_executor.sessions import SessionStatus
from starburst_executor.stores.memory import FakeClock, MemoryStore

SID = "20300101-000000-abcdef"

RUNNING = SessionStatus(
    session_id=SID,
    name="",
    state=SessionState.OPEN,
    total=4,
    pending=2,
    running=1,
    completed=1,
    failed=0,
    cancelled=0,
    workers=1,
    created=1.0,
    last_activity=2.0,
    store_url="memory://x",
)
FINISHED = replace(RUNNING, state=SessionState.FINISHED, pending=0, running=0, completed=4)


class Readings:
    """Statuses in order, and the waits between them (a fake clock: nothing sleeps)."""

    def __init__(self, *statuses: SessionStatus) -> None:
        self._left: Iterator[SessionStatus] = iter(statuses)
        self.waits: list[float] = []

    def read(self) -> SessionStatus:
        return next(self._left)

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False


def render(status: SessionStatus) -> str:
    return f"done {status.completed}/{status.total}\nstate {status.state}"


def test_blocks_follow_each_other_into_a_pipe_until_the_session_finishes() -> None:
    readings, out = Readings(RUNNING, replace(RUNNING, completed=2), FINISHED), io.StringIO()
    last = watch(readings.read, render, out, interval=0.5, tty=False, wait=readings.wait)
    assert last == FINISHED
    assert readings.waits == [0.5, 0.5]  # none after the last reading
    assert out.getvalue() == (
        "done 1/4\nstate open\n\ndone 2/4\nstate open\n\ndone 4/4\nstate finished\n"
    )


def test_on_a_terminal_each_block_replaces_the_previous_one() -> None:
    readings, out = Readings(RUNNING, FINISHED), io.StringIO()
    watch(readings.read, render, out, interval=1, tty=True, wait=readings.wait)
    # Back up over the two lines drawn, erase them, draw the new block.
    assert out.getvalue() == "done 1/4\nstate open\n\x1b[2F\x1b[Jdone 4/4\nstate finished\n"


def test_an_ended_session_is_watched_until_its_last_worker_is_gone() -> None:
    closing = replace(RUNNING, state=SessionState.CLOSED)  # a worker still runs a task
    ended = replace(closing, pending=0, running=0, workers=0, cancelled=3)
    readings = Readings(closing, closing, ended, RUNNING)
    assert watch(readings.read, render, io.StringIO(), tty=False, wait=readings.wait) == ended
    assert len(readings.waits) == 2


def test_max_updates_and_a_bad_interval() -> None:
    readings = Readings(RUNNING, RUNNING, RUNNING)
    watch(readings.read, render, io.StringIO(), tty=False, wait=readings.wait, max_updates=2)
    assert len(readings.waits) == 1
    with pytest.raises(ValueError, match="positive"):
        watch(readings.read, render, io.StringIO(), interval=0)


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    """A memory store (``memory://watch-test``) holding session SID: 2 tasks, 1 finished."""
    clock = FakeClock(1000.0)
    store = MemoryStore("watch-test", clock=clock)
    session = Session(store, SessionManifest(SID, created=1000.0, versions={}), Codec(secret_key()))
    session.create()
    done, running = session.next_bid(1), session.next_bid(1)
    for bid in (done, running):
        session.write_batch(bid, [])
    session.write_result(ResultRecord(done, "w1", 1, (TaskOutcome(0, True, dumps(1)),)), 0)
    yield store
    store.close()


def test_cli_watch_ends_by_itself_when_the_session_is_finished(
    store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    session = Session.open(store, SID, Codec(secret_key()))
    (left,) = [b for b in session.batch_ids() if b not in session.done()]
    session.write_result(ResultRecord(left, "w1", 1, (TaskOutcome(0, True, dumps(2)),)), 0)
    code = cli.main(["status", SID, "--store", "memory://watch-test", "--watch", "--json"])
    assert code == cli.EXIT_OK
    (line,) = capsys.readouterr().out.splitlines()  # finished at the first reading
    assert json.loads(line)["state"] == "finished" and json.loads(line)["completed"] == 2


def test_cli_watch_exits_0_on_ctrl_c(
    store: MemoryStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    def ctrl_c_at_the_second_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(watch_module, "_pause", ctrl_c_at_the_second_wait)
    argv = ["status", SID, "--store", "memory://watch-test", "-w", "--interval", "0.25"]
    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert waits == [0.25, 0.25]
    assert out.count("Completed:") == 2 and "Pending:" in out  # two readings, as `status`
    assert "\x1b[" not in out  # not a terminal: plain blocks


def test_cli_watch_refuses_a_bad_interval(
    store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["status", SID, "--store", "memory://watch-test", "--watch", "--interval", "0"]
    assert cli.main(argv) == cli.EXIT_ERROR
    assert "--interval must be a positive number" in capsys.readouterr().err
