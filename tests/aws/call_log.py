"""Record every AWS call a process makes, and check the record against IAM policies.

Recording: :func:`install` registers a botocore ``before-call`` handler on every botocore
session created afterwards (it wraps ``botocore.session.Session.__init__``), and each call
appends one JSON line to a file of its own under a shared directory::

    {"who": "client" | "worker", "service": "s3", "operation": "ListObjectsV2",
     "key": "AKIA...", "params": {...only what names a resource...}}

Other processes record through Python's ``sitecustomize`` hook: :func:`hook_dir` writes a
directory holding a ``sitecustomize.py`` and a copy of this module; a process with that
directory on ``PYTHONPATH`` and ``STARBURST_CALL_LOG`` / ``STARBURST_CALL_WHO`` in its
environment records its calls there (the container agent mounts it into worker containers).
This module imports only the standard library and botocore at import time, so it works in
the worker image as it is.

Checking: :func:`iam_actions` names the IAM actions of a call (the project's
``Aws.actions``), :func:`resource_of` the resource ARN it acts on, and :func:`violations`
evaluates each call against a set of policy documents: explicit Deny wins, an Allow must
match action, resource and the condition keys this module can derive from the request
(``s3:prefix``, ``ecs:cluster``); other condition keys are taken as met.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Call",
    "hook_dir",
    "iam_actions",
    "install",
    "read_calls",
    "resource_of",
    "uninstall",
    "violations",
]

ENV_DIR = "STARBURST_CALL_LOG"
ENV_WHO = "STARBURST_CALL_WHO"
# Request parameters that name what a call acts on (nothing else is written: no payloads).
_KEPT_PARAMS = (
    "Bucket", "Key", "Prefix", "Name", "Names", "cluster", "clusters", "task", "tasks",
    "taskDefinition", "family", "startedBy", "logGroupName", "logStreamName", "logStreamNames",
    "logGroupNamePrefix", "repositoryName", "RoleName", "RoleArn", "PolicyArn",
    "resourceArn", "AutoScalingGroupName",
)  # fmt: skip

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _keep(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_keep(v) for v in value if isinstance(v, str)]
    return None


_CONTEXT_KEY = "starburst_call_log_params"
_paused = threading.local()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Record nothing this thread calls meanwhile (a test's deliberate probes)."""
    _paused.on = True
    try:
        yield
    finally:
        _paused.on = False


def _keep_params(
    params: Mapping[str, Any], context: dict[str, Any] | None = None, **_: Any
) -> None:
    # before-parameter-build: the API parameters as the caller gave them. before-call sees
    # only the serialised request, but both events share the request's context dict.
    if context is None:
        return
    kept = {k: _keep(params[k]) for k in _KEPT_PARAMS if k in params}
    delete = params.get("Delete")
    if isinstance(delete, Mapping):  # DeleteObjects: the keys it deletes are its resources
        kept["DeleteKeys"] = [str(o.get("Key")) for o in delete.get("Objects", [])]
    # Only whether the call tags what it creates: tagging at creation is its own action.
    if params.get("tags") or params.get("Tags"):
        kept["Tagged"] = True
    for role in ("taskRoleArn", "executionRoleArn"):  # what RunTask will pass to ECS
        if isinstance(params.get(role), str):
            kept[role] = params[role]
    context[_CONTEXT_KEY] = kept


def _handler(
    model: Any, request_signer: Any = None, context: dict[str, Any] | None = None, **_: Any
) -> None:
    if getattr(_paused, "on", False):
        return
    key = None
    credentials = getattr(request_signer, "_credentials", None)  # botocore has no public one
    if credentials is not None:
        try:
            key = credentials.get_frozen_credentials().access_key
        except Exception:  # a recorder must never break the call it records
            key = None
    if "dir" not in _state:  # uninstalled: sessions made earlier still call this
        return
    kept = (context or {}).get(_CONTEXT_KEY, {})
    line = {
        "who": _state["who"],
        "service": model.service_model.service_name,
        "operation": model.name,
        "key": key,
        "params": kept,
    }
    with _lock:
        out = _state.get("file")
        if out is None:
            name = f"calls-{_state['who']}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            out = _state["file"] = open(Path(_state["dir"], name), "a", buffering=1)  # noqa: SIM115
        out.write(json.dumps(line) + "\n")


def install(directory: str | os.PathLike[str], who: str) -> None:
    """Record the AWS calls of every botocore session created from now on in this process."""
    import botocore.session

    with _lock:
        _state.update(dir=str(directory), who=who)
        if "original_init" in _state:
            return
        original = botocore.session.Session.__init__
        _state["original_init"] = original

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.register("before-parameter-build", _keep_params, unique_id="starburst-call-params")
        self.register("before-call", _handler, unique_id="starburst-call-log")

    botocore.session.Session.__init__ = init  # type: ignore[method-assign]


def uninstall() -> None:
    """Stop recording in sessions created from now on; close this process's file."""
    import botocore.session

    with _lock:
        original = _state.pop("original_init", None)
        out = _state.pop("file", None)
        _state.pop("dir", None)
    if original is not None:
        botocore.session.Session.__init__ = original  # type: ignore[method-assign]
    if out is not None:
        out.close()


def install_from_env() -> None:
    """The ``sitecustomize`` entry: record when ``STARBURST_CALL_LOG`` names a directory."""
    directory = os.environ.get(ENV_DIR)
    if directory:
        install(directory, os.environ.get(ENV_WHO, "client"))


_SITECUSTOMIZE = '''\
"""Records AWS calls for the starburst end-to-end tests (tests/aws/call_log.py)."""
try:
    import call_log
    call_log.install_from_env()
except Exception as exc:  # never stop the interpreter from starting
    import sys
    print(f"call_log: not recording: {exc!r}", file=sys.stderr)
'''


def hook_dir(directory: Path) -> Path:
    """Make ``directory/hook`` (a ``sitecustomize.py`` and this module, for ``PYTHONPATH``)
    and ``directory/calls`` (where records go, writable by any user: workers run as one of
    their own). Returns ``directory``."""
    hook = directory / "hook"
    calls = directory / "calls"
    hook.mkdir(parents=True, exist_ok=True)
    calls.mkdir(parents=True, exist_ok=True)
    calls.chmod(0o777)
    for path in (directory, hook):
        path.chmod(0o755)
    shutil.copyfile(__file__, hook / "call_log.py")
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    for file in hook.iterdir():
        file.chmod(0o644)
    return directory


# -- reading and checking ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One recorded call."""

    who: str
    service: str
    operation: str
    key: str | None
    params: dict[str, Any]


def read_calls(directory: Path) -> list[Call]:
    """Every call recorded under ``directory`` (its files in any order)."""
    calls = []
    for file in sorted(directory.glob("calls-*.jsonl")):
        for line in file.read_text().splitlines():
            if line.strip():
                data = json.loads(line)
                calls.append(
                    Call(
                        data["who"],
                        data["service"],
                        data["operation"],
                        data.get("key"),
                        data.get("params") or {},
                    )
                )
    return calls


def _snake(operation: str) -> str:
    from botocore import xform_name

    return str(xform_name(operation))


def iam_actions(service: str, operation: str) -> tuple[str, ...]:
    """The IAM actions a call needs, from the project's ``Aws.actions`` (or ``Aws.action``)."""
    from starburst_executor.aws.client import Aws

    actions = getattr(Aws, "actions", None)
    if actions is not None:
        return tuple(actions(service, _snake(operation)))
    return (Aws.action(service, _snake(operation)),)


def resource_of(
    call: Call, action: str, *, region: str, account: str, partition: str = "aws"
) -> list[str]:
    """The ARNs a call acts on, as IAM evaluates ``action``; ``["*"]`` when the action has no
    resource this module knows how to name (the action alone is then checked)."""
    p = call.params
    service = action.split(":", 1)[0]
    ecs = f"arn:{partition}:ecs:{region}:{account}"
    if service == "s3":
        bucket = p.get("Bucket")
        if not bucket:
            return ["*"]
        if action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject") and p.get("Key"):
            return [f"arn:{partition}:s3:::{bucket}/{p['Key']}"]
        if action == "s3:DeleteObject" and p.get("DeleteKeys"):  # DeleteObjects
            return [f"arn:{partition}:s3:::{bucket}/{key}" for key in p["DeleteKeys"]]
        return [f"arn:{partition}:s3:::{bucket}"]
    if service == "ssm":
        names = p.get("Names") or ([p["Name"]] if p.get("Name") else [])
        return [_ssm_arn(n, partition, region, account) for n in names] or ["*"]
    if service == "logs" and p.get("logGroupName"):
        group = f"arn:{partition}:logs:{region}:{account}:log-group:{p['logGroupName']}"
        return (
            [f"{group}:log-stream:{p.get('logStreamName', '*')}"]
            if call.operation in ("PutLogEvents", "CreateLogStream", "GetLogEvents")
            else [group]
        )
    if service == "ecr" and p.get("repositoryName"):
        return [f"arn:{partition}:ecr:{region}:{account}:repository/{p['repositoryName']}"]
    if service == "iam" and p.get("RoleName"):
        return [f"arn:{partition}:iam::{account}:role/{p['RoleName']}"]
    if service == "ecs":
        cluster = _cluster_name(p.get("cluster"))
        if call.operation == "RunTask" and p.get("taskDefinition"):
            definition = str(p["taskDefinition"])
            if not definition.startswith("arn:"):
                definition = f"{ecs}:task-definition/{definition}"
            return [definition]
        if call.operation in ("DescribeTasks", "StopTask"):
            tasks = p.get("tasks") or [p.get("task")]
            return [
                t if str(t).startswith("arn:") else f"{ecs}:task/{cluster}/{t}" for t in tasks if t
            ] or ["*"]
        if call.operation == "DescribeClusters":
            return [
                c if c.startswith("arn:") else f"{ecs}:cluster/{c}" for c in p.get("clusters") or []
            ] or ["*"]
    return ["*"]


def _ssm_arn(name: str, partition: str, region: str, account: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:{partition}:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


def _cluster_name(value: Any) -> str:
    return str(value or "default").rsplit("/", 1)[-1]


def _context(call: Call, *, region: str, account: str, partition: str) -> dict[str, str]:
    """The condition keys this module can derive from a request."""
    values: dict[str, str] = {}
    if call.service == "s3" and call.operation in ("ListObjectsV2", "ListObjects"):
        values["s3:prefix"] = str(call.params.get("Prefix", ""))
    if call.service == "ecs" and "cluster" in call.params:
        values["ecs:cluster"] = (
            f"arn:{partition}:ecs:{region}:{account}:cluster/{_cluster_name(call.params['cluster'])}"
        )
    return values


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _match(pattern: str, value: str, case: bool = True) -> bool:
    # IAM wildcards: * any run, ? one character; nothing else is special.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, got: want == got,
    "StringLike": lambda want, got: _match(want, got),
    "ArnEquals": lambda want, got: want == got,
    "ArnLike": lambda want, got: _match(want, got),
}


def _conditions_hold(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        check = _OPERATORS.get(operator)
        for key, wanted in tests.items():
            if check is None or key not in context:
                continue  # a key this module cannot derive: taken as met
            # A request without the key (HeadBucket has no s3:prefix) fails the condition.
            if not any(check(str(w), context[key]) for w in _listify(wanted)):
                return False
    return True


def _statements(documents: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for document in documents:
        yield from _listify(document.get("Statement", []))


def allowed(
    documents: Iterable[Mapping[str, Any]],
    action: str,
    resources: list[str],
    context: Mapping[str, str],
) -> bool:
    """IAM's evaluation, for identity policies: any matching Deny refuses, else an Allow
    matching the action, every resource and the conditions permits. A resource of ``"*"``
    (unknown) matches any statement resource."""
    statements = list(_statements(documents))

    def matches(statement: Mapping[str, Any], resource: str) -> bool:
        if not any(_match(a, action, case=False) for a in _listify(statement.get("Action", []))):
            return False
        if resource != "*" and not any(
            _match(r, resource) for r in _listify(statement.get("Resource", []))
        ):
            return False
        return _conditions_hold(statement.get("Condition", {}), context)

    for resource in resources:
        if any(s.get("Effect") == "Deny" and matches(s, resource) for s in statements):
            return False
        if not any(s.get("Effect") == "Allow" and matches(s, resource) for s in statements):
            return False
    return True


def implied(
    call: Call, calls: Iterable[Call], *, region: str, account: str, partition: str = "aws"
) -> list[tuple[str, list[str]]]:
    """The actions IAM also checks for ``call`` that its name does not say, with resources.

    - ECS creates with ``tags`` also need ``ecs:TagResource`` on what they create (AWS:
      "Tagging your resources ... during creation" needs the tagging permission);
    - ``RunTask`` needs ``iam:PassRole`` on the task definition's task and execution roles:
      taken from the ``RegisterTaskDefinition`` calls among ``calls`` (any family; a run that
      only reuses definitions registered earlier checks no role here).
    """
    found: list[tuple[str, list[str]]] = []
    ecs = f"arn:{partition}:ecs:{region}:{account}"
    if call.service == "ecs" and call.params.get("Tagged"):
        created = {
            "RunTask": f"{ecs}:task/{_cluster_name(call.params.get('cluster'))}/*",
            "RegisterTaskDefinition": f"{ecs}:task-definition/{call.params.get('family')}:*",
            "CreateCluster": f"{ecs}:cluster/{call.params.get('clusterName', '*')}",
        }.get(call.operation)
        if created:
            found.append(("ecs:TagResource", [created]))
    if call.service == "ecs" and call.operation == "RunTask":
        roles = sorted({
            str(c.params[r]) for c in calls
            if c.service == "ecs" and c.operation == "RegisterTaskDefinition"
            for r in ("taskRoleArn", "executionRoleArn") if c.params.get(r)
        })  # fmt: skip
        if roles:
            found.append(("iam:PassRole", roles))
    return found


def violations(
    calls: Iterable[Call],
    documents: Sequence[Mapping[str, Any]],
    *,
    region: str,
    account: str,
    partition: str = "aws",
) -> list[str]:
    """Each distinct (action, resource) of ``calls`` that ``documents`` do not allow,
    counting the actions each call :func:`implied`."""
    found: dict[str, None] = {}
    calls = list(calls)
    for call in calls:
        context = _context(call, region=region, account=account, partition=partition)
        named = [
            (action, resource_of(call, action, region=region, account=account,
                                 partition=partition))
            for action in iam_actions(call.service, call.operation)
        ]  # fmt: skip
        extra = implied(call, calls, region=region, account=account, partition=partition)
        for action, resources in named + extra:
            if not allowed(documents, action, resources, context):
                shown = {k: v for k, v in context.items()}
                found[
                    f"{call.who}: {call.service}.{call.operation} needs {action} on "
                    f"{', '.join(resources)}" + (f" with {shown}" if shown else "")
                ] = None
    return list(found)
