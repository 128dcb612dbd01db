"""``Quota``: how many workers the account lets one session run at once (Fargate or EC2).

Fargate limits the vCPUs an account runs concurrently per region, separately for On-Demand
(Service Quotas code ``L-3032A538``) and Spot (``L-36FBB829``). A session that asks for more
workers than fit would see RunTask fail for the excess, so the launcher starts at most
``floor(quota / cpu)`` workers and runs the rest in waves as workers finish.

On EC2, the instances count against the account's EC2 vCPU quotas: "Running On-Demand
Standard (A, C, D, H, I, M, R, T, Z) instances" (``ec2`` ``L-1216C47A``) and "All Standard
(A, C, D, H, I, M, R, T, Z) Spot Instance Requests" (``L-34B43A08``), both in vCPUs. The
launcher runs at most ``floor(quota / instance vCPUs) * workers per instance`` at once.

The quota is read once per kind from Service Quotas (``servicequotas:GetServiceQuota``).
When it cannot be read (no permission, the API is not offered, moto), a stated default is
used and the answer says so (``source == "default"``). Tests and users who know their quota
pass ``Quota(vcpus=N)``.
"""

from __future__ import annotations

import logging
import math

from starburst_executor.aws.client import Aws
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsLaunchError

__all__ = [
    "DEFAULT_EC2_VCPUS",
    "DEFAULT_FARGATE_VCPUS",
    "EC2_ON_DEMAND_VCPU",
    "EC2_SPOT_VCPU",
    "FARGATE_ON_DEMAND_VCPU",
    "FARGATE_SPOT_VCPU",
    "Quota",
]

logger = logging.getLogger(__name__)

FARGATE_SERVICE_CODE = "fargate"
FARGATE_ON_DEMAND_VCPU = "L-3032A538"  # "Fargate On-Demand vCPU resource count"
FARGATE_SPOT_VCPU = "L-36FBB829"  # "Fargate Spot vCPU resource count"
EC2_SERVICE_CODE = "ec2"
EC2_ON_DEMAND_VCPU = "L-1216C47A"  # "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z)"
EC2_SPOT_VCPU = "L-34B43A08"  # "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"

# Used when Service Quotas cannot be read. The ECS developer guide ("Amazon ECS service
# quotas", docs.aws.amazon.com/AmazonECS/latest/developerguide/service-quotas.html) warns
# that "new AWS accounts might have initial lower quotas that can increase over time"; the
# value applied to new accounts for both Fargate vCPU quotas is 6 vCPU (what the Service
# Quotas console shows on a fresh account), far below the 4,000 vCPU that
# GetAWSDefaultServiceQuota reports as the nominal default. We assume the low value: waves
# that are too small cost time, while RunTask calls beyond the quota fail. The notice tells
# the user how to let us read the real value.
DEFAULT_FARGATE_VCPUS = 6.0
# The same caution for EC2: new accounts have started with as little as 5 vCPUs for both
# Standard quotas (the EC2 "On-Demand Instance quotas" page calls them "default quotas
# [that] might be lower for new accounts"); assume the low value when unreadable.
DEFAULT_EC2_VCPUS = 5.0


class Quota:
    """Fargate vCPU quotas of one account and region, read once and cached.

    Args:
        aws: the AWS access to read Service Quotas with (not needed with ``vcpus``).
        vcpus: a fixed limit for both kinds (tests; users who know their quota): no AWS call.

    Raises:
        ValueError: neither ``aws`` nor ``vcpus`` given, or ``vcpus`` is negative.
    """

    def __init__(self, aws: Aws | None = None, *, vcpus: float | None = None) -> None:
        if aws is None and vcpus is None:
            raise ValueError("Quota needs an Aws object to read Service Quotas, or vcpus=N")
        if vcpus is not None and vcpus < 0:
            raise ValueError(f"vcpus must be >= 0, not {vcpus}")
        self._aws = aws
        self._fixed = vcpus
        self._cache: dict[str, tuple[float, str]] = {}  # quota code -> (limit, source)
        self.notices: list[str] = []

    @property
    def region(self) -> str:
        return self._aws.region if self._aws is not None else ""

    def fargate_vcpus(self, spot: bool) -> tuple[float, str]:
        """The account's Fargate vCPU limit and where it came from.

        Returns:
            ``(limit, source)``: ``source`` is ``"service-quotas"`` (read from AWS),
            ``"fixed"`` (given to the constructor) or ``"default"``
            (:data:`DEFAULT_FARGATE_VCPUS`, because Service Quotas could not be read).

        Raises:
            AwsCredentialsError: the credentials were rejected.
        """
        code = FARGATE_SPOT_VCPU if spot else FARGATE_ON_DEMAND_VCPU
        kind = "Fargate Spot" if spot else "Fargate On-Demand"
        return self._read(FARGATE_SERVICE_CODE, code, kind, DEFAULT_FARGATE_VCPUS)

    def ec2_vcpus(self, spot: bool) -> tuple[float, str]:
        """The account's EC2 Standard-instance vCPU limit (Spot or On-Demand) and where it
        came from, as :meth:`fargate_vcpus` (default :data:`DEFAULT_EC2_VCPUS`).

        Raises:
            AwsCredentialsError: the credentials were rejected.
        """
        code = EC2_SPOT_VCPU if spot else EC2_ON_DEMAND_VCPU
        kind = "EC2 Spot" if spot else "EC2 On-Demand"
        return self._read(EC2_SERVICE_CODE, code, kind, DEFAULT_EC2_VCPUS)

    def _read(self, service: str, code: str, kind: str, default: float) -> tuple[float, str]:
        if self._fixed is not None:
            return self._fixed, "fixed"
        if code in self._cache:
            return self._cache[code]
        assert self._aws is not None
        try:
            answer = self._aws.call(
                "service-quotas", "get_service_quota", ServiceCode=service, QuotaCode=code
            )
            result = (float(answer["Quota"]["Value"]), "service-quotas")
        except AwsCredentialsError:
            raise
        except AwsError as exc:
            # Best effort: an unreadable quota must not stop a session. AccessDenied, a quota
            # not set here (NoSuchResource) and an API that is not offered all land here.
            why = (
                "no permission servicequotas:GetServiceQuota"
                if exc.code == "AccessDenied"
                else f"Service Quotas answered {exc.code or exc}"
            )
            notice = (
                f"could not read your {kind} vCPU quota ({code}) in {self.region}: "
                f"{why}; assuming {default:g} vCPU, the value new accounts start "
                f"with. Check it with `aws service-quotas get-service-quota --service-code "
                f"{service} --quota-code {code} --region {self.region}`"
            )
            logger.info("%s", notice)
            self.notices.append(notice)
            result = (default, "default")
        except (KeyError, TypeError, ValueError) as exc:
            logger.info(
                "Service Quotas gave no value for %s (%r); assuming %g vCPU", code, exc, default
            )
            result = (default, "default")
        self._cache[code] = result
        return result

    def max_ec2_workers(self, instance_vcpus: int, per_instance: int, spot: bool) -> int:
        """How many workers the EC2 vCPU quota lets run at once: whole instances of
        ``instance_vcpus`` within the quota, ``per_instance`` workers each.

        Raises:
            AwsLaunchError: not even one instance fits; the message says how to ask for more.
        """
        limit, source = self.ec2_vcpus(spot)
        instances = math.floor(limit / max(1, instance_vcpus) + 1e-9)
        if instances >= 1 and per_instance >= 1:
            return instances * per_instance
        code = EC2_SPOT_VCPU if spot else EC2_ON_DEMAND_VCPU
        kind = "Spot" if spot else "On-Demand"
        region = self.region or "your region"
        raise AwsLaunchError(
            f"your EC2 {kind} Standard vCPU quota ({limit:g} vCPU, {source}) in {region} "
            f"does not hold one {instance_vcpus}-vCPU instance: request an increase "
            f"(`aws service-quotas request-service-quota-increase --service-code ec2 "
            f"--quota-code {code} --desired-value 64 --region {region}`)"
            + ("; or use spot=False (On-Demand has its own quota)" if spot else ""),
            "QuotaExceeded",
        )

    def max_workers(self, cpu: float, spot: bool) -> int:
        """How many workers of ``cpu`` vCPUs fit in the quota at once: ``floor(limit / cpu)``.

        Raises:
            ValueError: ``cpu`` is not positive.
            AwsLaunchError: not even one worker fits (a quota of 0, or below ``cpu``); the
                message says how to request an increase.
        """
        if cpu <= 0:
            raise ValueError(f"cpu must be positive, not {cpu}")
        limit, source = self.fargate_vcpus(spot)
        fit = math.floor(limit / cpu + 1e-9)
        if fit >= 1:
            return fit
        code = FARGATE_SPOT_VCPU if spot else FARGATE_ON_DEMAND_VCPU
        kind = "Spot" if spot else "On-Demand"
        region = self.region or "your region"
        if limit <= 0:
            what = f"your Fargate {kind} vCPU quota is 0"
        else:
            what = (
                f"your Fargate {kind} vCPU quota ({limit:g} vCPU, {source}) is smaller than "
                f"one worker ({cpu:g} vCPU)"
            )
        raise AwsLaunchError(
            f"{what} in {region}: request an increase in Service Quotas "
            f"(https://console.aws.amazon.com/servicequotas/home/services/fargate/quotas/{code}, "
            f"or `aws service-quotas request-service-quota-increase --service-code fargate "
            f"--quota-code {code} --desired-value 64 --region {region}`)"
            + ("; or use spot=False (On-Demand has its own quota)" if spot else "")
            + (f"; or smaller workers (cpu={limit:g})" if 0 < limit < cpu else ""),
            "QuotaExceeded",
        )
