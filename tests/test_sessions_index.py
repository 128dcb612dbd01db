"""The per-user session index (``STARBURST_HOME/sessions/``): which store a session lives in.

It must survive concurrent writers (sessions started at the same moment from separate
processes), read and migrate the single ``sessions.json`` of earlier versions, and forget a
session when asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from detached_support import subprocess_env, wait_until

from starburst_executor.config import forget_session, home_dir, indexed_sessions
from starburst_executor.sessions import remember_session, remembered_store  # the old names

# Each process imports everything first, then waits for the gate, so that all of them create
# their session (and write the index) within a few milliseconds of each other.
_STARTER = r"""
import os, sys, time
from starburst_executor import DetachedExecutor
store, gate, ready = sys.argv[1:4]
open(os.path.join(ready, str(os.getpid())), "w").close()
while not os.path.exists(gate):
    time.sleep(0.001)
ex = DetachedExecutor(max_workers=1, store=store)
print(ex.session_id, flush=True)
"""


@pytest.mark.slow
def test_sessions_started_concurrently_from_16_processes_are_all_found(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    gate, ready = tmp_path / "gate", tmp_path / "ready"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _STARTER, store, str(gate), str(ready)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for _ in range(16)
    ]
    wait_until(lambda: len(list(ready.iterdir())) == 16, timeout=120, what="16 ready processes")
    gate.touch()
    sids = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        sids.append(out.strip())
    assert len(set(sids)) == 16
    found = {sid: remembered_store(sid) for sid in sids}
    assert found == {sid: store for sid in sids}
    assert {e.session_id for e in indexed_sessions()} == set(sids)


def test_the_old_sessions_json_is_read_and_migrated(tmp_path: Path) -> None:
    home = home_dir()
    home.mkdir(parents=True)
    old = {"20250101-000000-aaaaaa": "file:///old/a", "20250101-000000-bbbbbb": "s3://b/p"}
    (home / "sessions.json").write_text(json.dumps(old))
    assert remembered_store("20250101-000000-aaaaaa") == "file:///old/a"  # read as it is

    remember_session("20250102-000000-cccccc", "file:///new")  # the first write migrates
    assert not (home / "sessions.json").exists()
    assert {e.session_id: e.store_url for e in indexed_sessions()} == {
        **old,
        "20250102-000000-cccccc": "file:///new",
    }
    assert remembered_store("20250101-000000-bbbbbb") == "s3://b/p"


def test_a_session_is_forgotten_and_a_malformed_id_is_never_a_path() -> None:
    remember_session("20250102-000000-cccccc", "file:///new")
    entry = indexed_sessions()[0]
    assert (entry.store_url, entry.pid > 0, entry.created <= time.time()) == (
        "file:///new",
        True,
        True,
    )
    forget_session("20250102-000000-cccccc")
    assert remembered_store("20250102-000000-cccccc") is None
    assert indexed_sessions() == []
    assert remembered_store("../secret") is None
    forget_session("../../x")  # nothing to remove, and no file outside the index is touched
