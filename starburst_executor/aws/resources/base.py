"""What every resource module shares: report rows, status words, the starburst tag, the
"not found is an answer" call, and the exception a check raises.

Each module beside this one owns one kind of AWS resource and keeps its whole life side by
side: ``ensure`` (create, adopt or repair; setup), ``check`` (read only; ``starburst
doctor``) and ``remove`` (teardown). ``ensure`` and ``check`` judge the resource with the same
helper, so setup and doctor cannot disagree about what "right" means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starburst_executor.aws.client import Aws
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = [
    "ABSENT",
    "CREATED",
    "EXISTS",
    "FAILED",
    "IAM_PROPAGATION_ATTEMPTS",
    "IAM_PROPAGATION_DELAY",
    "KEPT",
    "REMOVED",
    "SETUP_FIX",
    "TAG_KEY",
    "TAG_VALUE",
    "UPDATED",
    "CheckFailed",
    "Place",
    "ResourceStatus",
    "Run",
    "absent",
    "table",
    "tagged",
    "tags",
]

logger = logging.getLogger(__name__)

CREATED, EXISTS, UPDATED = "created", "exists", "updated"
REMOVED, ABSENT, KEPT, FAILED = "removed", "absent", "kept", "failed"

TAG_KEY, TAG_VALUE = "starburst", "true"

# A new IAM role or instance profile takes seconds to be usable by EC2 and ECS (IAM is
# eventually consistent): the calls that need one are retried this often, this far apart.
IAM_PROPAGATION_ATTEMPTS, IAM_PROPAGATION_DELAY = 6, 5.0

SETUP_FIX = "run `starburst setup` (it creates or repairs this, and changes nothing else)"


@dataclass(frozen=True)
class ResourceStatus:
    """One resource in a report.

    Attributes:
        kind: what it is ("S3 bucket", "IAM role" ...).
        name: its name or id.
        status: setup: ``created`` / ``exists`` / ``updated``; teardown: ``removed`` /
            ``absent`` / ``kept`` / ``failed``.
        detail: what changed, or why.
    """

    kind: str
    name: str
    status: str
    detail: str = ""


def table(rows: Sequence[ResourceStatus]) -> str:
    """The rows as aligned columns under a RESOURCE/NAME/STATUS/DETAIL header."""
    header = ResourceStatus("RESOURCE", "NAME", "STATUS", "DETAIL")
    widths = [max(len(getattr(r, f)) for r in (header, *rows)) for f in ("kind", "name", "status")]
    lines = []
    for r in (header, *rows):
        cells = (
            r.kind.ljust(widths[0]),
            r.name.ljust(widths[1]),
            r.status.ljust(widths[2]),
            r.detail,
        )
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class CheckFailed(Exception):
    """Raised by a resource's ``check``: what is wrong (``detail``) and what fixes it."""

    def __init__(self, detail: str, fix: str = SETUP_FIX) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass
class Place:
    """Where the resources live: the client (its region), the account and its partition."""

    aws: Aws
    account: str
    partition: str

    @property
    def region(self) -> str:
        return self.aws.region

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call(service, operation, **params)

    @classmethod
    def of(cls, aws: Aws) -> Place:
        """The place of the caller's credentials (one ``sts:GetCallerIdentity``)."""
        identity = aws.call("sts", "get_caller_identity")
        return cls(aws, str(identity["Account"]), str(identity["Arn"]).split(":")[1])


@dataclass
class Run(Place):
    """One setup or teardown run: a :class:`Place`, plus the rows and notes of its report."""

    rows: list[ResourceStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str, status: str, detail: str = "") -> None:
        if status not in (EXISTS, ABSENT, KEPT):
            logger.info("%s %s %s %s", kind, name, status, detail)
        self.rows.append(ResourceStatus(kind, name, status, detail))


def absent(
    aws: Aws, service: str, operation: str, codes: Iterable[str], **params: Any
) -> dict[str, Any] | None:
    """``aws.call(...)``, or None when AWS answers with one of the not-found ``codes``."""
    try:
        return aws.call(service, operation, **params)
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        if exc.code in codes:
            return None
        raise


def tags(style: str = "Key", **extra: str) -> list[dict[str, str]]:
    """The starburst tag (and ``extra`` ones) in a service's spelling (``Key`` or ``key``)."""
    pairs = {TAG_KEY: TAG_VALUE, **extra}
    if style == "Key":
        return [{"Key": k, "Value": v} for k, v in pairs.items()]
    return [{"key": k, "value": v} for k, v in pairs.items()]


def tagged(found: Iterable[dict[str, Any]], key: str = TAG_KEY, value: str = TAG_VALUE) -> bool:
    """True if the tag list ``found`` (``Key``/``Value`` or ``key``/``value``) holds key=value."""
    return any(
        (t.get("Key", t.get("key")), t.get("Value", t.get("value"))) == (key, value) for t in found
    )
