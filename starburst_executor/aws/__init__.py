"""The AWS backend: S3 store, ECS workers (Fargate or EC2, Spot), ECR images, CloudWatch logs.

Modules, one job each:

- ``client``: the choke point for AWS calls (retries, error translation).
- ``settings``: the profile ``starburst setup`` writes and ``backend="aws"`` reads.
"""
