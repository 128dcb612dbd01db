"""The signing key: an SSM SecureString parameter holding the HMAC key that signs session
records; created from this client's key, checked, deleted.

An existing parameter is kept even when it differs from this machine's key: sessions already
running sign with it, and the AWS backend reads the key from the parameter at run time, so
client and workers still agree.
"""

from __future__ import annotations

from starburst_executor import config
from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    REMOVED,
    UPDATED,
    CheckFailed,
    Place,
    Run,
    absent,
    tags,
)

__all__ = ["check", "ensure", "remove"]


def ensure(run: Run, name: str) -> None:
    key = config.secret_key().hex()
    found = absent(
        run.aws, "ssm", "get_parameter", ["ParameterNotFound"], Name=name, WithDecryption=True
    )
    if found is None:
        # The default key (aws/ssm) encrypts it; see policies.execution_role_policy.
        run.call(
            "ssm",
            "put_parameter",
            Name=name,
            Value=key,
            Type="SecureString",
            Description="starburst: HMAC key signing session records",
            Tags=tags("Key"),
        )
        run.add("SSM parameter", name, CREATED, "SecureString, this client's key")
        return
    parameter = found["Parameter"]
    status, detail = EXISTS, "SecureString"
    if parameter.get("Type") != "SecureString":
        run.call(
            "ssm",
            "put_parameter",
            Name=name,
            Value=parameter["Value"],
            Type="SecureString",
            Overwrite=True,
        )
        status, detail = UPDATED, "re-stored as SecureString"
    if parameter["Value"] != key:
        run.notes.append(
            f"the signing key in {name} differs from this machine's key "
            f"({config.home_dir() / 'secret.key'} or STARBURST_SECRET_KEY); kept both: "
            "AWS sessions read the key from the parameter"
        )
    run.add("SSM parameter", name, status, detail)


def check(place: Place, name: str) -> str:
    found = absent(
        place.aws, "ssm", "get_parameter", ["ParameterNotFound"], Name=name, WithDecryption=True
    )
    if found is None:
        raise CheckFailed(f"the SSM parameter {name} does not exist")
    kind = found["Parameter"].get("Type")
    if kind != "SecureString":
        raise CheckFailed(f"the SSM parameter {name} is a {kind}, not a SecureString")
    return f"{name} is a readable SecureString"


def remove(place: Place, name: str) -> tuple[str, str]:
    gone = absent(place.aws, "ssm", "delete_parameter", ["ParameterNotFound"], Name=name)
    return (ABSENT, "") if gone is None else (REMOVED, "")
