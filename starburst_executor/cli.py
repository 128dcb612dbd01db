"""The ``starburst`` command line: list, inspect, collect, follow and end sessions.

Exit codes (stable, for scripts):

====  ==========================================================
0     success
1     an error (store unreachable, damaged record, ``collect -o`` not writable,
      output pipe closed early ...); message on stderr
2     bad command line
3     no such session (or its data was deleted); ``cancel`` of a session that was
      cleaned up (nothing is changed)
4     ``collect``: some tasks failed (results were still written)
5     ``collect --wait --timeout``: the timeout passed first
====  ==========================================================
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starburst_executor import __version__
from starburst_executor._text import cell, ljust, width
from starburst_executor.config import (
    default_store_url,
    home_dir,
    remembered_store,
    validate_session_id,
)
from starburst_executor.errors import SessionError, StarburstError
from starburst_executor.protocol import SessionKeys, SessionState
from starburst_executor.sessions import SessionReader, SessionStatus, codec_for
from starburst_executor.stores import Store, open_store

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TASKS_FAILED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5

_EPILOG = """\
examples:
  starburst sessions                         list sessions in the default store
  starburst sessions --store s3://bkt/runs   ... in another store
  starburst status 20261121-081500-3fa9c2    counts, workers, progress
  starburst status SID --watch               ... refreshed until the session ends
  starburst dashboard                        live web page of the sessions (127.0.0.1)
  starburst collect SID -o results.pkl       what is done so far, as a pickled list
  starburst collect SID --wait -o all.pkl    wait for everything (Ctrl-C to stop waiting)
  starburst logs SID --follow                worker logs as they grow
  starburst logs SID --task BATCH/0          one task's output and traceback
  starburst cancel SID                       drop pending work; workers exit
  starburst cleanup SID --delete-data        stop workers and delete the session's data
  starburst prune --older-than 7d --dry-run  what crashed clients and old sessions left
  starburst worker --session SID             run a worker here, joining the session

  starburst setup --region us-east-1         create the AWS resources (once; idempotent)
  starburst image build                      build and push the worker image to ECR
  starburst doctor                           check the AWS set-up; prints each fix
  starburst teardown                         remove what setup created

exit codes: 0 ok, 1 error, 2 bad usage, 3 no such session (or cleaned up), 4 some
tasks failed, 5 timeout.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starburst",
        description="Inspect and manage starburst-executor sessions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, example: str, session: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=f"{help_}\n\nexample:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if session:
            p.add_argument(
                "session",
                metavar="SID",
                type=_session_id,
                help="session id (see `starburst sessions`)",
            )
        p.add_argument(
            "--store",
            help="store URL (default: where the session was created from "
            "this machine, else $STARBURST_STORE or the embedded default)",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    add("sessions", "List the sessions in a store.", "starburst sessions --json", session=False)
    p = add("status", "Show a session's counts, workers and progress.", "starburst status SID")
    p.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="refresh until the session finishes (Ctrl-C stops watching)",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="with --watch: seconds (2)"
    )
    p = add(
        "dashboard",
        "Serve a live web page of the store's sessions on 127.0.0.1.",
        "starburst dashboard SID --port 8050",
        session=False,
    )
    p.add_argument(
        "session", metavar="SID", nargs="?", type=_session_id, help="open on this session"
    )
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the page's address")
    p = add(
        "collect",
        "Write the results of finished tasks to a pickle file.",
        "starburst collect SID --wait -o results.pkl",
    )
    p.add_argument(
        "-o", "--output", required=True, help="file to write (a pickled list of TaskResult)"
    )
    p.add_argument("--wait", action="store_true", help="wait until every task is finished")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    p = add("logs", "Show worker logs, or one task's output.", "starburst logs SID --follow")
    p.add_argument("--task", help="a task id (BATCH/INDEX, as in TaskResult.task_id)")
    p.add_argument("--worker", help="only this worker's log")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing as logs grow")
    add(
        "cancel",
        "Cancel a session: pending tasks will not run, workers exit.",
        "starburst cancel SID",
    )
    p = add(
        "cleanup",
        "Close a session and stop its workers; optionally delete its data.",
        "starburst cleanup SID --delete-data",
    )
    p.add_argument("--delete-data", action="store_true", help="delete all of the session's objects")
    p.add_argument(
        "--keep-workers",
        action="store_true",
        help="do not signal workers; they exit within seconds by themselves",
    )
    p = add(
        "prune",
        "Remove sessions that crashed clients left, and old ended sessions.",
        "starburst prune --older-than 7d --dry-run",
        session=False,
    )
    p.add_argument(
        "--older-than",
        default="7d",
        metavar="AGE",
        help="remove closed, expired and cancelled sessions idle longer than this "
        "(e.g. 7d, 12h, 30m; default 7d). Plain sessions whose client is gone go at once",
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    # Listed for the command overview; `starburst worker ...` is handed to the worker's own
    # parser before this one runs (see main).
    sub.add_parser("worker", help="Run a worker in the foreground for a session.")
    from starburst_executor.cli_aws import add_commands

    add_commands(sub)
    return parser


def _session_id(text: str) -> str:
    try:
        return validate_session_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerate_any_encoding()
    try:
        code = _run(argv)
        sys.stdout.flush()  # inside the try: a reader that went away shows here
    except BrokenPipeError:
        # The reader closed the pipe (`starburst sessions | head -1`): stop quietly. Python
        # flushes stdout again at exit, so point it at devnull first, as the Python docs'
        # "Note on SIGPIPE" (signal module) recommends.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    return code


def _tolerate_any_encoding() -> None:
    """Session names, paths and errors may be any Unicode: on a terminal that cannot show
    them (``LANG=C``, ``PYTHONIOENCODING=ascii``) print escapes rather than fail."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _run(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        # Handed over before parsing: the worker's own parser owns its options (and --help);
        # argparse's REMAINDER would refuse "worker --store URL" as unrecognized arguments.
        from starburst_executor.worker.__main__ import main as worker_main

        return worker_main(_with_remembered_store(argv[1:]), prog="starburst worker")
    args = _parser().parse_args(argv)
    try:
        from starburst_executor.cli_aws import COMMANDS as AWS_COMMANDS

        return int({**_COMMANDS, **AWS_COMMANDS}[args.command](args))
    except SessionError as exc:
        print(f"starburst: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except BrokenPipeError:
        raise
    except (StarburstError, ValueError, OSError) as exc:
        print(f"starburst: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _with_remembered_store(argv: list[str]) -> list[str]:
    """Worker arguments with ``--store`` added from the session index when only
    ``--session`` is given, as every other command finds a session's store."""
    if any(a == "--store" or a.startswith("--store=") for a in argv) or os.environ.get(
        "STARBURST_STORE"
    ):
        return argv
    session = None
    for i, arg in enumerate(argv):
        if arg == "--session" and i + 1 < len(argv):
            session = argv[i + 1]
        elif arg.startswith("--session="):
            session = arg.split("=", 1)[1]
    if session is None:
        session = os.environ.get("STARBURST_SESSION")
    if not session:
        return argv  # the worker's parser says what is missing
    return [*argv, "--store", remembered_store(session) or default_store_url()]


def _store(args: argparse.Namespace) -> Store:
    if args.store:
        return open_store(args.store)
    session = getattr(args, "session", None)
    return open_store(remembered_store(session) if session else None)


def _reader(args: argparse.Namespace) -> SessionReader:
    store = _store(args)
    return SessionReader(store, args.session, codec_for(store))


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _cmd_sessions(args: argparse.Namespace) -> int:
    from starburst_executor.sessions import list_sessions

    rows = list_sessions(_store(args))
    header = (
        "SESSION",
        "NAME",
        "STATE",
        "CREATED",
        "LAST ACTIVITY",
        "TOTAL",
        "PENDING",
        "RUNNING",
        "DONE",
        "FAILED",
    )
    table = [header] + [
        (
            s.session_id,
            cell(s.name) or "-",
            s.state,
            _fmt(s.created),
            _fmt(s.last_activity),
            str(s.total),
            str(s.pending),
            str(s.running),
            str(s.completed),
            str(s.failed),
        )
        for s in rows
    ]
    widths = [max(width(r[i]) for r in table) for i in range(len(header))]
    text = "\n".join("  ".join(ljust(c, w) for c, w in zip(r, widths)).rstrip() for r in table)
    if not rows:
        text = "no sessions in this store"
    _emit(args, [s.to_dict() for s in rows], text)
    return EXIT_OK


def _fmt(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_status(args)
    status: SessionStatus = _reader(args).status()
    _emit(args, status.to_dict(), str(status))
    return EXIT_OK


def _watch_status(args: argparse.Namespace) -> int:
    from starburst_executor.dashboard.watch import watch

    reader = _reader(args)

    def render(status: SessionStatus) -> str:  # one JSON line per reading with --json
        return json.dumps(status.to_dict(), default=str) if args.json else str(status)

    try:
        watch(
            reader.status,
            render,
            sys.stdout,
            interval=args.interval,
            tty=False if args.json else None,
        )
    except KeyboardInterrupt:
        pass  # Ctrl-C only stops watching: not an error
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from starburst_executor.dashboard import serve

    def announce(url: str, port: int) -> None:
        if args.json:
            print(json.dumps({"url": url, "port": port}), flush=True)
        else:
            print(f"starburst dashboard: {url}  (Ctrl-C to stop)", flush=True)

    store = _store(args)
    try:
        serve(
            store,
            port=args.port,
            session_id=args.session,
            open_browser=not args.no_browser,
            on_ready=announce,
        )
    except KeyboardInterrupt:
        pass  # the way to stop it
    return EXIT_OK


def _cmd_collect(args: argparse.Namespace) -> int:
    from starburst_executor.detached import DetachedExecutor

    _check_writable(Path(args.output))  # before waiting, maybe for hours
    ex = DetachedExecutor.attach(args.session, store=args.store)
    try:
        results = ex.collect(
            wait=args.wait,
            timeout=args.timeout,
            progress=args.wait and not args.no_progress and not args.json,
        )
    except TimeoutError as exc:
        print(f"starburst: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    Path(args.output).write_bytes(pickle.dumps(results))
    failed = [r for r in results if not r.ok]
    summary = {
        "session": args.session,
        "collected": len(results),
        "failed": len(failed),
        "failed_tasks": [r.index for r in failed],
        "output": args.output,
    }
    text = f"wrote {len(results)} results ({len(failed)} failed) to {args.output}"
    if failed:
        text += f"\nfailed tasks (by index): {_index_ranges([r.index for r in failed])}"
    for r in failed[:5]:
        text += f"\n  task {r.index}, {r.task_id}: {type(r.error).__name__}: {r.error}"
    if len(failed) > 5:
        text += f"\n  ... and {len(failed) - 5} more (each TaskResult.error in the file)"
    _emit(args, summary, text)
    return EXIT_TASKS_FAILED if failed else EXIT_OK


def _index_ranges(indices: list[int]) -> str:
    """``[2, 5, 6, 7]`` as ``"2, 5-7"``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _check_writable(path: Path) -> None:
    """Raise ``OSError`` (saying what to do) unless ``path`` can be written; leaves nothing.

    Raises:
        OSError: ``path`` is a directory, or cannot be created or opened for writing.
    """
    what = f"cannot write the results to {str(path)!r}"
    if path.is_dir():
        raise IsADirectoryError(f"{what}: it is a directory; give a file name with -o")
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with open(path, "xb"):
                pass
            path.unlink()
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror or exc}. Choose another -o path") from None


def _cmd_logs(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if args.task:
        return _task_log(reader, args.task)
    if reader.manifest.backend == "aws":  # workers log to CloudWatch
        from starburst_executor.cli_aws import ecs_logs

        return ecs_logs(reader, args.worker, args.follow)
    local = home_dir() / "logs" / args.session
    offsets: dict[Path, int] = {}
    while True:
        files = sorted(local.glob("*.log")) if local.is_dir() else []
        if args.worker:
            files = [f for f in files if f.stem == args.worker]
        for path in files:
            with open(path, "rb") as fh:
                fh.seek(offsets.get(path, 0))
                chunk = fh.read()
                offsets[path] = fh.tell()
            for line in chunk.decode(errors="replace").splitlines():
                print(f"[{path.stem}] {line}" if not args.worker else line)
        if not files and not offsets:
            _store_logs(reader, args.worker)
            if not args.follow:
                return EXIT_OK
        if not args.follow:
            return EXIT_OK
        sys.stdout.flush()
        status = reader.status()
        if not status.workers and (status.done or status.state.terminal):
            return EXIT_OK
        time.sleep(0.5)


def _store_logs(reader: SessionReader, worker: str | None) -> None:
    """Logs that workers uploaded when they exited (workers on other machines)."""
    for info in reader.store.list(reader.keys.logs):
        wid = SessionKeys.leaf(info.key)
        if worker and wid != worker:
            continue
        for line in reader.store.get(info.key).data.decode(errors="replace").splitlines():
            print(f"[{wid}] {line}")


def _task_log(reader: SessionReader, task_id: str) -> int:
    bid, _, index_text = task_id.partition("/")
    try:
        index = int(index_text.split(".")[0])
    except ValueError:
        print(
            f"starburst: task id {task_id!r} is not BATCH/INDEX (see TaskResult.task_id)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    done = reader.done()
    if bid not in done:
        if bid not in reader.batch_ids():
            raise SessionError(f"no task {task_id!r} in session {reader.session_id}")
        print(f"task {task_id} has not finished yet")
        return EXIT_OK
    record = reader.read_result(done[bid])
    output = record.outputs.get(index, "")
    print(f"task {task_id} (worker {record.worker}, attempt {record.attempt})")
    print(output if output else "(no output)")
    outcomes = record.decode_outcomes()
    error = outcomes if isinstance(outcomes, BaseException) else outcomes[index].error
    if error is not None:
        print(f"failed: {type(error).__name__}: {error}")
        if error.__cause__ is not None:
            print(str(error.__cause__))
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    from starburst_executor.detached import DetachedExecutor

    state = _reader(args).state()  # SessionError (exit 3) if its data was deleted
    if state is SessionState.CLOSED:
        print(
            f"starburst: session {args.session} was cleaned up (closed): nothing to cancel; "
            "nothing was changed",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    if state in (SessionState.CANCELLED, SessionState.EXPIRED):
        _emit(
            args,
            {"session": args.session, "state": state},
            f"session {args.session} is already {state}: nothing was changed",
        )
        return EXIT_OK
    ex = DetachedExecutor.attach(args.session, store=args.store)
    ex.cancel()
    _emit(
        args,
        {"session": args.session, "state": SessionState.CANCELLED.value},
        f"session {args.session} cancelled: pending tasks will not run; workers exit "
        "after their current batch",
    )
    return EXIT_OK


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from starburst_executor.detached import DetachedExecutor

    ex = DetachedExecutor.attach(args.session, store=args.store)
    ex.cleanup(stop_workers=not args.keep_workers, delete_data=args.delete_data)
    what = "closed, data deleted" if args.delete_data else "closed, results kept"
    _emit(
        args,
        {
            "session": args.session,
            "state": (SessionState.DELETED if args.delete_data else SessionState.CLOSED).value,
        },
        f"session {args.session} {what}",
    )
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace) -> int:
    from starburst_executor.prune import parse_age, prune

    older_than = parse_age(args.older_than)
    removed = prune(
        [args.store] if args.store else None, older_than=older_than, dry_run=args.dry_run
    )
    verb = "would remove" if args.dry_run else "removed"
    lines = [
        f"{verb} {p.session_id}" + (f" ({p.store_url})" if p.store_url else "") + f": {p.reason}"
        for p in removed
    ]
    lines.append(f"{verb} {len(removed)} item(s)" if removed else "nothing to prune")
    _emit(
        args,
        {"dry_run": args.dry_run, "removed": [vars(p) for p in removed]},
        "\n".join(lines),
    )
    return EXIT_OK


_COMMANDS = {
    "sessions": _cmd_sessions,
    "status": _cmd_status,
    "dashboard": _cmd_dashboard,
    "collect": _cmd_collect,
    "logs": _cmd_logs,
    "cancel": _cmd_cancel,
    "cleanup": _cmd_cleanup,
    "prune": _cmd_prune,
}

if __name__ == "__main__":
    sys.exit(main())
