"""The AWS commands of the ``starburst`` command line: ``setup``, ``teardown``, ``doctor``,
``image build``, and CloudWatch logs for sessions that ran on ECS.

Kept apart from :mod:`starburst_executor.cli` so that the local commands never import the
AWS modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "add_commands", "ecs_logs"]

EXIT_OK, EXIT_ERROR = 0, 1


def add_commands(sub: Any) -> None:
    """Register the AWS subcommands on the main parser's subparsers."""

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_,
            description=f"{help_}\n\nexample:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--profile",
            help="profile name (default: $STARBURST_AWS_PROFILE or "
            "'default'); one profile per region/account",
        )
        return p

    p = add(
        "setup",
        "Create or adopt every AWS resource starburst needs (idempotent).",
        "starburst setup --region us-east-1",
    )
    p.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    p.add_argument("--bucket", help="S3 bucket (default: starburst-ACCOUNT-REGION)")
    p.add_argument("--prefix", default="starburst", help="key prefix of sessions in the bucket")
    p.add_argument("--cluster", default="starburst", help="ECS cluster name")
    p.add_argument(
        "--ec2",
        action="store_true",
        help="also an EC2 (Spot) capacity provider, for launch_type='EC2'",
    )
    p.add_argument(
        "--instance-types",
        default="c7a.xlarge",
        help="comma-separated EC2 instance types for --ec2",
    )
    p.add_argument(
        "--lifecycle-days",
        type=int,
        default=30,
        help="session data expires from the bucket after this many days",
    )
    p.add_argument("--log-retention-days", type=int, default=14, help="CloudWatch log retention")
    p.add_argument(
        "--vpc-id", help="VPC for the workers (default: the subnets', else the default VPC)"
    )
    p.add_argument(
        "--subnets",
        default="",
        help="comma-separated subnets for the workers (default: every subnet of the VPC; at "
        "most 16 are used, spread over the availability zones)",
    )
    p.add_argument(
        "--print-policy",
        nargs="?",
        const="setup",
        choices=["setup", "user"],
        help="print the IAM policy to grant and create nothing: 'setup' (default) for whoever "
        "runs setup and teardown, 'user' for whoever runs sessions",
    )
    p = add("teardown", "Remove what `starburst setup` created.", "starburst teardown")
    p.add_argument(
        "--delete-bucket",
        action="store_true",
        help="also empty and delete the bucket (default: keep it and its results)",
    )
    p = add(
        "doctor",
        "Check credentials, region, bucket, roles, cluster, image and quota; print "
        "the fix for each problem.",
        "starburst doctor",
    )
    p.add_argument(
        "--docker",
        default="docker",
        help="the docker executable that reads the image's config (else: ECR's API)",
    )
    p = add(
        "image",
        "Build the worker image from this environment and push it to ECR.",
        "starburst image build --requirements requirements.txt",
    )
    p.add_argument("action", choices=["build"], help="build (and push) the image")
    p.add_argument(
        "--requirements",
        type=Path,
        help="requirements or lock file for the image (default: every installed distribution)",
    )
    p.add_argument("--no-push", action="store_true", help="build locally only")
    p.add_argument("--docker", default="docker", help="the docker executable (docker, podman)")
    p.add_argument(
        "--base-image",
        help="the Python base image (default: python:X.Y-slim of this Python); it needs "
        "python and pip on PATH",
    )
    p.add_argument(
        "--platform",
        default="linux/amd64",
        choices=["linux/amd64", "linux/arm64"],
        help="the workers' CPU architecture: linux/amd64 (default, Fargate's X86_64) or "
        "linux/arm64 (Graviton, about 20%% cheaper; building it on x86 needs qemu/binfmt)",
    )


def _aws(region: str | None = None) -> Any:
    from starburst_executor.aws.client import Aws

    return Aws(region)


def _setup(args: argparse.Namespace) -> int:
    import json

    from starburst_executor.aws.setup import policy, setup

    if args.print_policy:
        document = policy(
            _aws(args.region),
            args.print_policy,
            bucket=args.bucket,
            prefix=args.prefix,
            cluster=args.cluster,
            ec2=args.ec2,
            profile=args.profile,
        )
        print(json.dumps(document, indent=2))
        return EXIT_OK
    report = setup(
        _aws(args.region),
        bucket=args.bucket,
        prefix=args.prefix,
        cluster=args.cluster,
        ec2=args.ec2,
        instance_types=tuple(t for t in args.instance_types.split(",") if t),
        lifecycle_days=args.lifecycle_days,
        log_retention_days=args.log_retention_days,
        profile=args.profile,
        vpc_id=args.vpc_id,
        subnets=tuple(s for s in args.subnets.split(",") if s),
    )
    print(report)
    return EXIT_OK


def _teardown(args: argparse.Namespace) -> int:
    from starburst_executor.aws.settings import AwsSettings
    from starburst_executor.aws.setup import teardown

    settings = AwsSettings.load(args.profile)
    print(teardown(_aws(settings.region), settings, delete_bucket=args.delete_bucket))
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from starburst_executor.aws.doctor import doctor, format_checks
    from starburst_executor.aws.settings import AwsSettings
    from starburst_executor.errors import AwsNotSetUpError

    try:
        settings: Any = AwsSettings.load(args.profile)
    except AwsNotSetUpError:
        settings = None
    checks = doctor(_aws(settings.region if settings else None), settings, docker=args.docker)
    print(format_checks(checks))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_ERROR


def _image(args: argparse.Namespace) -> int:
    from starburst_executor.aws.image import build_and_push, capture_environment, ecr_registry
    from starburst_executor.aws.settings import AwsSettings

    settings = AwsSettings.load(args.profile)
    aws = _aws(settings.region)
    account = aws.call("sts", "get_caller_identity")["Account"]
    repository = f"{ecr_registry(account, settings.region)}/{settings.ecr_repository}"
    env = capture_environment(args.requirements)
    if env.skipped:
        print(
            f"not in the image: {'; '.join(env.skipped)}. Ship local code with code_files=[...]",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="starburst-image-") as context:
        built = build_and_push(
            aws,
            repository,
            env,
            context_dir=Path(context),
            base_image=args.base_image,
            platform=args.platform,
            docker=args.docker,
            push=not args.no_push,
            notify=print,
        )
    if args.no_push:
        print(f"built {built.uri} ({built.architecture}); not pushed, the profile is unchanged")
    else:
        updated = dataclasses.replace(
            settings, image=built.uri, image_architecture=built.architecture
        )
        updated.save(args.profile)
        print(f"the profile now uses {built.uri} ({built.architecture})")
    return EXIT_OK


def ecs_logs(reader: Any, worker: str | None, follow: bool) -> int:
    """Print the CloudWatch logs of an ECS session's workers (``starburst logs``).

    Only the session's streams are read: its registered workers' and, with ``--follow``, its
    ECS tasks' (a task whose worker cannot start never registers, and its log says why).
    Following starts at the session's creation and returns once the session has ended: done,
    closed, cancelled or expired, and none of its ECS tasks still running.
    """
    from starburst_executor.aws.launcher import ECSLauncher
    from starburst_executor.aws.logs import follow_logs, read_logs
    from starburst_executor.aws.options import session_backend

    options = session_backend(reader.manifest).options
    aws = _aws(options.region)
    launcher = ECSLauncher(aws, options, reader.manifest.session_id, reader.manifest.store_url)
    live: list[str] = []

    def workers() -> list[str]:
        ids = {w.worker for w in reader.workers()} | set(live)
        return sorted(w for w in ids if worker is None or w == worker)

    def finished() -> bool:
        live[:] = launcher.live_workers()
        status = reader.status()
        terminal = status.done or status.state.terminal
        return bool(terminal and not live)

    lines = (
        follow_logs(aws, options.log_group, workers, finished, start_time=reader.manifest.created)
        if follow
        else read_logs(aws, options.log_group, workers())
    )
    for line in lines:
        stamp = time.strftime("%H:%M:%S", time.localtime(line.timestamp))
        print(f"[{line.worker}] {stamp} {line.message}")
    return EXIT_OK


COMMANDS = {"setup": _setup, "teardown": _teardown, "doctor": _doctor, "image": _image}
