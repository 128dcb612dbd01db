"""``prepare``: everything an :class:`~starburst_executor.backends.AwsBackend` checks and
decides before a session starts.

In order, each failure a clear error before anything is launched or paid for: the saved
profile (``starburst setup`` ran), the region, a ``store=`` the workers' role can reach, the
worker size (Fargate pairs) and architecture, the worker count against the ceiling and the
vCPU quota (waves when the quota is smaller), the image in ECR, the cost estimate (of the
workers that run at once) against ``max_hourly_cost``, and the signing key from SSM.

What it finds is reported through :mod:`logging` (logger ``starburst_executor.aws.backend``):
the estimate at INFO, the ARM64 On-Demand fallback and quota waves at WARNING; a cost above
``cost_alert_threshold`` is a :class:`~starburst_executor.errors.CostAlertWarning`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass

from starburst_executor.aws.client import Aws
from starburst_executor.aws.cost import CostEstimate, check_budget, ec2_packing, estimate
from starburst_executor.aws.options import AwsSessionBackend, EcsOptions
from starburst_executor.aws.quota import Quota
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.backends import AwsBackend
from starburst_executor.errors import AwsError, AwsNotSetUpError, CostAlertWarning

__all__ = ["AwsPlan", "check_store", "prepare", "secret_key_from_ssm"]

logger = logging.getLogger(__name__)
DEFAULT_WORKERS = 10


@dataclass(frozen=True)
class AwsPlan:
    """The checked plan for one AWS session.

    Attributes:
        notices: what the plan found worth telling (the estimate first), as logged.
    """

    settings: AwsSettings
    options: EcsOptions
    store_url: str
    max_workers: int
    secret_key: bytes
    estimate: CostEstimate
    notices: tuple[str, ...]

    def session_backend(self, requested: AwsBackend) -> AwsSessionBackend:
        """The backend record the session's manifest keeps (options resolved, rate)."""
        return AwsSessionBackend(requested, self.options, self.estimate.per_worker_hour)


def prepare(
    backend: AwsBackend,
    *,
    max_workers: int | None,
    store: object = None,
    aws: Aws | None = None,
) -> AwsPlan:
    """Check and plan an AWS session (see the module docstring).

    Args:
        backend: the options asked for (``None`` fields take the profile's).
        max_workers: the executor's ``max_workers`` (``None``: 10, or the ceiling if lower).
        store: the executor's ``store=`` (a URL or a ``Store``), ``None`` for the profile's:
            it must lie inside the bucket prefix the task role may use (:func:`check_store`).
        aws: the AWS client to use (default: one for the profile's region).

    Raises:
        AwsNotSetUpError: no profile, or the image is missing from ECR.
        ValueError: a region other than the profile's, a store the workers cannot reach, an
            invalid CPU/memory pair, Fargate Spot with an ARM64 image, or more workers than
            the ceiling.
        AwsLaunchError: a vCPU quota of zero.
        CostLimitError: the estimate exceeds ``max_hourly_cost``.
    """
    settings = AwsSettings.load()
    region = backend.region
    if region is not None and region != settings.region:
        raise ValueError(
            f"region mismatch: the AWS profile was set up in {settings.region}, but "
            f"region={region!r} was asked. Run `starburst setup --region {region}` to set up "
            f"that region too (with STARBURST_AWS_PROFILE naming a second profile), or drop "
            "the region argument"
        )
    store_url = check_store(settings, store)
    options = EcsOptions.resolve(settings, backend)
    workers = max_workers or min(DEFAULT_WORKERS, options.max_workers_ceiling)
    if workers > options.max_workers_ceiling:
        raise ValueError(
            f"max_workers={workers} is above the ceiling of {options.max_workers_ceiling} "
            "workers per session (a guard against runaway costs); lower it, or raise "
            "max_workers_ceiling in the profile (STARBURST_MAX_WORKERS_CEILING)"
        )
    aws = aws or Aws(settings.region)
    warnings_: list[str] = []
    if backend.spot is None and options.spot_fallback(settings):
        warnings_.append(
            "The worker image is ARM64, which Fargate Spot does not run: these workers use "
            "Fargate On-Demand (ARM64 On-Demand is about 20 % cheaper than x86)."
        )
    quota = Quota(aws)
    if options.launch_type == "FARGATE":
        fits = quota.max_workers(options.cpu, options.spot)  # AwsLaunchError if none fits
        kind = "Fargate"
    else:
        packing = ec2_packing(aws, options)
        fits = quota.max_ec2_workers(packing.vcpus, packing.per_instance, options.spot)
        kind = "EC2"
    if fits < workers:
        warnings_.append(
            f"Your {kind} vCPU quota allows {fits} of the {workers} workers at once: "
            f"they run in waves ({fits} now, more as workers finish)."
        )
    _check_image(aws, options.image)
    cost = estimate(aws, options, workers, at_once=fits)
    alert = check_budget(cost, backend.max_hourly_cost, backend.cost_alert_threshold)
    logger.info("%s", cost)
    for line in warnings_:
        logger.warning("%s", line)
    if alert:
        # A warning, not a log record: the user set the threshold to be told, and warnings
        # show by default (once per call site) where an unconfigured logger would not.
        warnings.warn(alert, CostAlertWarning, stacklevel=_user_stacklevel())
    notices = (str(cost), *warnings_, *([alert] if alert else []))
    return AwsPlan(
        settings,
        options,
        store_url,
        workers,
        secret_key_from_ssm(aws, settings),
        cost,
        notices,
    )


def check_store(settings: AwsSettings, store: object) -> str:
    """The store URL of a session: the profile's, or ``store`` when the workers may use it.

    The task role (:func:`~starburst_executor.aws.policies.task_role_policy`) reaches only
    ``s3://{bucket}/{prefix}/...`` of the profile, so another bucket, another prefix or a
    local directory would leave every worker unable to read its session.

    Raises:
        ValueError: ``store`` lies outside what the workers can reach (the message says
            which bucket and prefix they can).
    """
    if store is None:
        return settings.store_url
    url = str(getattr(store, "url", store))
    reach = settings.store_url + "/..."
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    own = settings.prefix.strip("/")
    prefix = prefix.strip("/")
    inside = not own or prefix == own or prefix.startswith(own + "/")
    if scheme != "s3" or bucket != settings.bucket or not inside:
        raise ValueError(
            f"store={url!r}: backend='aws' workers can only reach {reach} (their task role "
            f"is limited to bucket {settings.bucket!r}, prefix {own + '/' if own else '(any)'})."
            " Drop store= to use the profile's store, or use a prefix inside it, e.g. "
            f"{settings.store_url}/my-project"
        )
    return url


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


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_stacklevel() -> int:
    """The ``stacklevel`` at which a warning given by this module's caller names the user's
    line (``StarburstExecutor(...)``), however many of the package's frames lie between
    (``DetachedExecutor`` adds one). Python 3.12's ``skip_file_prefixes`` does this."""
    level = 1
    frame = sys._getframe(1)  # the caller of warnings.warn
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
