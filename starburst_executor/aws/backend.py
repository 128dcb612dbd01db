"""``prepare``: everything ``backend="aws"`` checks and decides before a session starts.

In order, each failure a clear error before anything is launched or paid for: the saved
profile (``starburst setup`` ran), the region, the worker size (Fargate pairs), the worker
count against the ceiling and the vCPU quota (waves when the quota is smaller), the image in
ECR, the cost estimate against ``max_hourly_cost``, and the signing key from SSM.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from starburst_executor.aws.client import Aws
from starburst_executor.aws.cost import CostEstimate, check_budget, estimate
from starburst_executor.aws.options import EcsOptions
from starburst_executor.aws.quota import Quota
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.errors import AwsError, AwsLaunchError, AwsNotSetUpError

__all__ = ["AwsPlan", "prepare", "secret_key_from_ssm"]

logger = logging.getLogger(__name__)
DEFAULT_WORKERS = 10


@dataclass(frozen=True)
class AwsPlan:
    """The checked plan for one AWS session."""

    settings: AwsSettings
    options: EcsOptions
    store_url: str
    max_workers: int
    secret_key: bytes
    estimate: CostEstimate
    notices: tuple[str, ...]


def prepare(
    *,
    max_workers: int | None,
    cpu: float | None = None,
    memory: str | int | None = None,
    launch_type: str | None = None,
    instance_type: str | None = None,
    spot: bool | None = None,
    region: str | None = None,
    image: str | None = None,
    max_hourly_cost: float | None = None,
    cost_alert_threshold: float | None = None,
    aws: Aws | None = None,
    quiet: bool = False,
) -> AwsPlan:
    """Check and plan an AWS session (see the module docstring).

    Raises:
        AwsNotSetUpError: no profile, or the image is missing from ECR.
        ValueError: a region other than the profile's, an invalid CPU/memory pair, or more
            workers than the ceiling.
        AwsLaunchError: a vCPU quota of zero.
        CostLimitError: the estimate exceeds ``max_hourly_cost``.
    """
    settings = AwsSettings.load()
    if region is not None and region != settings.region:
        raise ValueError(
            f"region mismatch: the AWS profile was set up in {settings.region}, but "
            f"region={region!r} was asked. Run `starburst setup --region {region}` to set up "
            f"that region too (with STARBURST_AWS_PROFILE naming a second profile), or drop "
            "the region argument"
        )
    options = EcsOptions.resolve(
        settings,
        cpu=cpu,
        memory=memory,
        launch_type=launch_type,
        spot=spot,
        instance_type=instance_type,
        image=image,
    )
    workers = max_workers or min(DEFAULT_WORKERS, options.max_workers_ceiling)
    if workers > options.max_workers_ceiling:
        raise ValueError(
            f"max_workers={workers} is above the ceiling of {options.max_workers_ceiling} "
            "workers per session (a guard against runaway costs); lower it, or raise "
            "max_workers_ceiling in the profile (STARBURST_MAX_WORKERS_CEILING)"
        )
    aws = aws or Aws(settings.region)
    notices: list[str] = []
    if options.launch_type == "FARGATE":
        fits = Quota(aws).max_workers(options.cpu, options.spot)
        if fits <= 0:
            raise AwsLaunchError(
                f"your Fargate vCPU quota allows no {options.cpu:g}-vCPU worker in "
                f"{settings.region}: request an increase in the Service Quotas console "
                "(Fargate On-Demand / Spot vCPU resource count), or use smaller workers"
            )
        if fits < workers:
            notices.append(
                f"Your Fargate vCPU quota allows {fits} of the {workers} workers at once: "
                f"they run in waves ({fits} now, more as workers finish)."
            )
    _check_image(aws, options.image)
    cost = estimate(aws, options, workers)
    warning = check_budget(cost, max_hourly_cost, cost_alert_threshold)
    notices.insert(0, str(cost))
    if warning:
        notices.append(warning)
    if not quiet:
        for line in notices:
            print(line, file=sys.stderr)
    return AwsPlan(
        settings,
        options,
        settings.store_url,
        workers,
        secret_key_from_ssm(aws, settings),
        cost,
        tuple(notices),
    )


def _check_image(aws: Aws, image: str) -> None:
    """Refuse an ECR image that is not there (ECS would fail every task after minutes)."""
    registry, _, rest = image.partition("/")
    if ".dkr.ecr." not in registry:
        return  # a public or other registry: ECS will tell
    repository, _, tag = rest.partition(":")
    try:
        aws.call(
            "ecr",
            "describe_images",
            repositoryName=repository,
            imageIds=[{"imageTag": tag or "latest"}],
        )
    except AwsError as exc:
        if exc.code in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise AwsNotSetUpError(
                f"the worker image {image} is not in ECR: run `starburst image build` to "
                "build and push it"
            ) from exc
        raise


def secret_key_from_ssm(aws: Aws, settings: AwsSettings) -> bytes:
    """The HMAC key shared with the workers (setup stored it as an SSM SecureString)."""
    try:
        value = aws.call(
            "ssm", "get_parameter", Name=settings.secret_parameter, WithDecryption=True
        )["Parameter"]["Value"]
    except AwsError as exc:
        if exc.code == "ParameterNotFound":
            raise AwsNotSetUpError(
                f"the signing key parameter {settings.secret_parameter} is missing: run "
                "`starburst setup` again"
            ) from exc
        raise
    return bytes.fromhex(str(value))
