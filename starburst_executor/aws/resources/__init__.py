"""The AWS resources sessions run on, one module per resource, each holding that resource's
``ensure`` (setup), ``check`` (doctor) and ``remove`` (teardown) side by side:

- ``bucket``: the session bucket (private, encrypted, TLS-only, expiring the prefix).
- ``repository``: the ECR repository of the worker image.
- ``log_group``: the workers' CloudWatch log group.
- ``signing_key``: the SSM parameter holding the HMAC signing key.
- ``iam``: the execution, task and instance roles, the instance profile, ECS's
  service-linked role.
- ``network``: VPC and subnets, the security group, the S3 gateway endpoint.
- ``cluster``: the ECS cluster, its capacity providers, the workers' task definitions.
- ``ec2``: launch template, Auto Scaling group and capacity provider for EC2 workers.

``base`` holds what they share (report rows, tags, :class:`~.base.CheckFailed`); ``names``
derives every name from the cluster name and region.
"""
