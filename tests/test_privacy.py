"""Private by default (issue 10, item 7): the directory store, worker logs and the session
index are created 700 (files 600), and a store directory that other users can write to is
refused. The tests run as root here, which reads anything anyway: they check the modes the
package creates and the refusal, which root observes like anyone."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import executor_tasks as tasks
import pytest
from detached_support import subprocess_env

from starburst_executor import DetachedExecutor, StoreConfigError
from starburst_executor.stores.local import LocalStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree(top: Path) -> tuple[dict[Path, int], dict[Path, int]]:
    dirs, files = {top: _mode(top)}, {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            dirs[Path(dirpath, name)] = _mode(Path(dirpath, name))
        for name in filenames:
            files[Path(dirpath, name)] = _mode(Path(dirpath, name))
    return dirs, files


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common umask 022, which made everything 755 / 644 before."""
    old = os.umask(0o022)
    yield None
    os.umask(old)


def test_a_run_leaves_store_logs_and_index_readable_by_their_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None, reap: list[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("STARBURST_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    store = home / "store"  # the default store's place: home and store are created here
    ex = DetachedExecutor(max_workers=1, store=store.as_uri())
    reap.append(ex.session_id)
    try:
        assert ex.submit(tasks.square, 4).result(timeout=30) == 16
        dirs, files = _tree(home)
    finally:
        ex.cleanup(stop_workers=True)
    names = {p.relative_to(home).parts[0] for p in files}
    assert {"logs", "sessions", "store", "secret.key"} <= names, names
    assert any(p.suffix == ".log" for p in files)  # a worker's log
    assert any("results" in p.parts for p in files)
    assert any("index" in p.parts for p in files)
    assert {p: oct(m) for p, m in dirs.items() if m != 0o700} == {}
    assert {p: oct(m) for p, m in files.items() if m != 0o600} == {}


def test_a_store_directory_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StoreConfigError) as info:
        LocalStore(shared)
    message = str(info.value)
    assert str(shared) in message and "mode 777" in message
    assert f"chmod 700 {shared}" in message
    assert not (shared / ".starburst-internal").exists()  # nothing written there
    shared.chmod(0o700)
    LocalStore(shared).put("k", b"v")  # fixed as told: accepted


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_a_store_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, os.getuid() + 1, -1)  # root may give it away; a user could not
    with pytest.raises(StoreConfigError, match="owned by another user"):
        LocalStore(theirs)
