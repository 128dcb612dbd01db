"""The worker image: the client's environment captured, built from ``worker/Dockerfile`` and
pushed to ECR once per distinct environment and architecture. (Local modules shipped with one
session, Banyan's ``code_files``, are :mod:`starburst_executor.code_files`.)

- :func:`capture_environment` -> :class:`Environment`: the Python version and the
  requirements (a requirements file, or every installed distribution except packaging tools
  and other platforms' packages), with a digest that names the image (``py3.11-<digest>``).
- :func:`worker_files`: the ``worker/`` directory (the one Dockerfile, the entrypoint), from a
  checkout or from the installed package's data.
- :func:`write_context`: a build context of the same layout as a checkout's root.
- :func:`build_image`: ``docker build`` with the base image, platform and the host's CA
  bundle; returns the built :class:`WorkerImage` with its architecture.
- :func:`build_and_push`: reuse the ECR image if the tag exists, else build and push, and
  return the digest-pinned URI; each failure says which command failed and shows its stderr.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import starburst_executor
from starburst_executor.aws.client import Aws
from starburst_executor.errors import AwsError, AwsNotSetUpError, ImageBuildError

__all__ = [
    "CA_BUNDLE_VARIABLES",
    "DEFAULT_PLATFORM",
    "ENTRYPOINT",
    "Environment",
    "ImageBuildError",
    "WorkerImage",
    "build_and_push",
    "build_image",
    "capture_environment",
    "ecr_registry",
    "ecs_architecture",
    "host_ca_bundle",
    "source_tree",
    "worker_files",
    "write_context",
]

logger = logging.getLogger(__name__)

_DIST_NAME = "starburst-executor"

_STDERR_TAIL_LINES = 25

ENTRYPOINT = ("/usr/local/bin/starburst-worker",)
"""The image's ENTRYPOINT (``worker/entrypoint.sh``, which execs the worker); its CMD is empty.
Task definitions set neither ``entryPoint`` nor ``command``: Docker appends ``command`` to the
ENTRYPOINT as arguments."""

DEFAULT_PLATFORM = "linux/amd64"
"""Fargate's default CPU architecture (X86_64), whatever machine builds the image."""

CA_BUNDLE_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
"""Where the build looks for the host's CA bundle, first existing file wins."""

# Docker's architecture names -> ECS runtimePlatform.cpuArchitecture.
_ECS_ARCHITECTURES = {"amd64": "X86_64", "x86_64": "X86_64", "arm64": "ARM64", "aarch64": "ARM64"}

# Never worth a pin in the image: the base image brings its own packaging tools, and
# pkg-resources==0.0.0 is a phantom of Debian/Ubuntu venvs that no index serves.
_PACKAGING_TOOLS = frozenset({"pip", "setuptools", "wheel", "distribute", "pkg-resources"})
# Distributions that exist for Windows or macOS only (the image is Linux).
_PLATFORM_ONLY = re.compile(r"^(pywin32|pywin32-ctypes|pywinpty|pypiwin32|wmi|appnope|pyobjc.*)$")
# Wheel platform tags of other operating systems.
_OTHER_OS_TAG = re.compile(r"^(win|macosx|ios|android)")


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Environment:
    """What the worker image must contain to run the client's tasks.

    Attributes:
        python: the client's Python, ``major.minor.patch``.
        requirements: pip requirement lines, in install order.
        source: where they came from: a file path, or "installed distributions".
        starburst_version: this package's version.
        package_digest: sha256 of this package's source files, which the image installs: an
            edited checkout gets a new image even before its version changes.
        skipped: distributions left out of ``requirements``, each ``"name (why)"``: editable
            or local installs (ship them with ``code_files``), packaging tools the base image
            brings, and packages for another operating system.
    """

    python: str
    requirements: tuple[str, ...]
    source: str
    starburst_version: str
    package_digest: str = ""
    skipped: tuple[str, ...] = field(default=(), compare=False)

    @property
    def python_minor(self) -> str:
        """``"3.11"``: what the default base image ``python:X.Y-slim`` and the protocol check
        use."""
        return ".".join(self.python.split(".")[:2])

    def canonical(self) -> str:
        """The text the digest is taken of. The patch version is left out: the base image
        tracks the latest patch of the minor, and the worker protocol checks the minor only."""
        return json.dumps(
            {
                "python": self.python_minor,
                "requirements": list(self.requirements),
                "starburst": self.starburst_version,
                "package": self.package_digest,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def digest(self) -> str:
        """The first 12 hex digits of the sha256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        """The environment's tag, ``py3.11-<digest>`` (images add their architecture)."""
        return f"py{self.python_minor}-{self.digest}"

    def requirements_txt(self) -> str:
        return "".join(f"{line}\n" for line in self.requirements)


_NOT_IN_IMAGE = re.compile(
    r"^(-r|--requirement|-c|--constraint|-e|--editable)\b|^(\.{1,2}/|/|~|file:)"
)


def _read_requirements(path: Path) -> tuple[str, ...]:
    """Requirement lines of a pip requirements file: comments and blanks dropped,
    continuation lines joined (pip-compile's ``--hash`` lines)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line:
            lines.append(line)
    if pending.strip():
        lines.append(pending.strip())
    refused = [line for line in lines if _NOT_IN_IMAGE.search(line)]
    if refused:
        raise ValueError(
            f"{path} has lines the image build cannot follow (the build context holds only "
            f"this file): {', '.join(refused)}. Inline the referenced requirements, and ship "
            "local packages with the session's code instead"
        )
    return tuple(lines)


def _site_dirs() -> set[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    return {Path(d).resolve() for d in dirs}


def _other_platform(dist: importlib.metadata.Distribution) -> str | None:
    """The other OS a distribution was built for only (from its wheel's platform tags), or
    None when it may run on Linux (pure Python, Linux wheels, sdist installs)."""
    wheel = dist.read_text("WHEEL") or ""
    platforms = {
        line.split(":", 1)[1].strip().rsplit("-", 1)[-1]
        for line in wheel.splitlines()
        if line.startswith("Tag:")
    }
    if platforms and all(_OTHER_OS_TAG.match(p) for p in platforms):
        return sorted(platforms)[0].split("_", 1)[0]
    return None


def _not_for_linux(name: str, dist: importlib.metadata.Distribution | None = None) -> str | None:
    """Why ``name`` does not belong in a Linux image, or None."""
    if _PLATFORM_ONLY.match(_canonical_name(name)):
        return "for Windows or macOS only"
    built_for = _other_platform(dist) if dist is not None else None
    if built_for:
        return f"built for {built_for} only"
    return None


def _installed(exclude: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(requirements, skipped)`` from the distributions installed in this interpreter."""
    site_dirs = _site_dirs()
    pins: dict[str, str] = {}
    seen: set[str] = set()
    skipped: list[str] = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = _canonical_name(name)
        if key in seen or key in exclude or key == _DIST_NAME:
            continue  # the first on sys.path is the one imported; this package is built in
        seen.add(key)
        if key in _PACKAGING_TOOLS:
            skipped.append(f"{name} (packaging tool: the base image brings its own)")
            continue
        other = _not_for_linux(name, dist)
        if other:
            skipped.append(f"{name} ({other})")
            continue
        direct = dist.read_text("direct_url.json")
        info: dict[str, Any] = json.loads(direct) if direct else {}
        if "vcs_info" in info:
            vcs = info["vcs_info"]
            pins[key] = f"{name} @ {vcs['vcs']}+{info['url']}@{vcs['commit_id']}"
        elif "dir_info" in info or str(info.get("url", "")).startswith("file:"):
            how = "editable" if info.get("dir_info", {}).get("editable") else "local"
            skipped.append(f"{name} ({how} install: ship it with code_files)")
        elif Path(str(dist.locate_file(""))).resolve() not in site_dirs:
            # a legacy `setup.py develop`
            skipped.append(f"{name} (not in site-packages: ship it with code_files)")
        else:
            pins[key] = f"{name}=={dist.version}"
    return tuple(pins[k] for k in sorted(pins)), tuple(sorted(skipped, key=str.lower))


def _package_digest() -> str:
    root = Path(starburst_executor.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def capture_environment(
    requirements: Path | None = None, *, exclude: Iterable[str] = ()
) -> Environment:
    """Capture what the worker image needs to run this client's tasks.

    Args:
        requirements: a pip requirements (or ``pip-compile`` / ``uv pip compile`` lock) file.
            Without it, every distribution installed here, pinned ``name==version`` and sorted,
            except this package (the image installs it from source), packaging tools (pip,
            setuptools, wheel: the base image has them), packages for Windows or macOS only
            (by name, or by their wheel's platform tags), and editable or local installs.
            A requirements file is taken as written, except lines naming a Windows- or
            macOS-only package without an environment marker. Whatever is left out is in
            ``Environment.skipped`` with the reason.
        exclude: distribution names to leave out (e.g. packages for the client's OS only).

    Raises:
        ValueError: the requirements file references files or local paths the build cannot see.
        FileNotFoundError: ``requirements`` does not exist.
    """
    excluded = {_canonical_name(name) for name in exclude}
    if requirements is not None:
        kept: list[str] = []
        dropped: list[str] = []
        for line in _read_requirements(Path(requirements)):
            name = re.split(r"[\s<>=!~;@\[]", line, maxsplit=1)[0]
            if _canonical_name(name) in excluded:
                continue
            why = None if ";" in line else _not_for_linux(name)  # a marker lets pip decide
            if why:
                dropped.append(f"{name} ({why})")
            else:
                kept.append(line)
        reqs, skipped = tuple(kept), tuple(dropped)
        source = str(requirements)
    else:
        reqs, skipped = _installed(excluded)
        source = "installed distributions"
    try:
        version = importlib.metadata.version(_DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(starburst_executor, "__version__", "0")
    python = ".".join(str(part) for part in sys.version_info[:3])
    return Environment(
        python=python,
        requirements=reqs,
        source=source,
        starburst_version=version,
        package_digest=_package_digest(),
        skipped=skipped,
    )


# --------------------------------------------------------------------------- build context

# What the Dockerfile copies from worker/ (the rest of worker/ is documentation and the
# offline base-image recipe).
_WORKER_FILES = ("Dockerfile", "entrypoint.sh", "pip-install.sh")


def worker_files() -> Path:
    """The directory holding ``worker/``'s files: the package data of an installed wheel
    (``starburst_executor/_worker_image``), else a checkout's ``worker/``.

    Raises:
        ImageBuildError: neither exists (a broken installation).
    """
    package = Path(starburst_executor.__file__).resolve().parent
    for candidate in (package / "_worker_image", package.parent / "worker"):
        if all((candidate / name).is_file() for name in _WORKER_FILES):
            return candidate
    raise ImageBuildError(
        f"the worker image files ({', '.join(_WORKER_FILES)}) are neither in {package} "
        f"/_worker_image nor in a checkout's worker/: reinstall {_DIST_NAME}"
    )


def source_tree() -> Path:
    """The checkout this package runs from (where ``pyproject.toml`` sits next to it).

    Raises:
        ImageBuildError: the package was installed from a wheel: no source tree to build from.
    """
    root = Path(starburst_executor.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{_DIST_NAME}"' in pyproject.read_text():
        return root
    raise ImageBuildError(
        f"the {_DIST_NAME} source tree is not next to the installed package (installed from a "
        "wheel?): pass source_dir= a checkout of the repository, or build the image elsewhere "
        "and pass image=..."
    )


def _installed_source(target: Path) -> Path:
    """A minimal source tree of the installed package: its files, and a ``pyproject.toml``
    with its name, version and dependencies from the installed metadata."""
    dist = importlib.metadata.distribution(_DIST_NAME)
    requires = [r for r in (dist.requires or []) if "extra ==" not in r]
    target.mkdir(parents=True, exist_ok=True)
    (target / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{_DIST_NAME}"\nversion = "{dist.version}"\n'
        f"dependencies = {json.dumps(requires)}\n\n"
        '[tool.setuptools.packages.find]\ninclude = ["starburst_executor*"]\n\n'
        '[tool.setuptools.package-data]\nstarburst_executor = ["py.typed"]\n'
    )
    (target / "README.md").write_text(f"{_DIST_NAME} {dist.version} (from an installed wheel)\n")
    shutil.copytree(
        Path(starburst_executor.__file__).resolve().parent,
        target / "starburst_executor",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_worker_image"),
    )
    return target


def host_ca_bundle() -> Path | None:
    """The host's CA bundle: the first existing file named by ``PIP_CERT``, ``SSL_CERT_FILE``
    or ``REQUESTS_CA_BUNDLE`` (behind a TLS-intercepting proxy, pip in the build needs it)."""
    for variable in CA_BUNDLE_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


def write_context(
    env: Environment,
    context_dir: Path,
    source_dir: Path | None = None,
    *,
    ca_bundle: Path | None = None,
) -> Path:
    """Fill ``context_dir`` with a build context laid out like a checkout's root:
    ``pyproject.toml``, ``README.md``, ``starburst_executor/`` from the source tree, and
    ``worker/`` with the Dockerfile, the entrypoint, ``requirements.txt`` of ``env`` and,
    given ``ca_bundle``, ``worker/ca-bundle.crt`` (pip trusts it during the build; the image
    deletes it after installing).

    Returns:
        The Dockerfile's path (``context_dir/worker/Dockerfile``).

    Raises:
        ImageBuildError: ``source_dir`` is not a checkout. Without ``source_dir``, the
            checkout this package runs from, or else the installed package's own files.
    """
    synthesized = False
    if source_dir is not None:
        source = Path(source_dir)
    else:
        try:
            source = source_tree()
        except ImageBuildError:
            # Installed from a wheel (pip install starburst-executor): the image installs the
            # very package this client runs, rebuilt from its installed files.
            source = _installed_source(Path(tempfile.mkdtemp(prefix="starburst-src-")))
            synthesized = True
    needed = [source / "pyproject.toml", source / "README.md", source / "starburst_executor"]
    missing = [p.name for p in needed if not p.exists()]
    if missing:
        raise ImageBuildError(
            f"{source} is not a {_DIST_NAME} checkout: it lacks {', '.join(missing)}"
        )
    worker = worker_files()
    context_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "pyproject.toml", context_dir / "pyproject.toml")
    shutil.copy2(source / "README.md", context_dir / "README.md")
    shutil.copytree(
        source / "starburst_executor",
        context_dir / "starburst_executor",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "_worker_image"),
    )
    if synthesized:
        shutil.rmtree(source)
    target = context_dir / "worker"
    target.mkdir(exist_ok=True)
    for name in _WORKER_FILES:
        shutil.copyfile(worker / name, target / name)
        # Scripts must be executable in the image whatever the install kept of file modes.
        (target / name).chmod(0o644 if name == "Dockerfile" else 0o755)
    (target / "requirements.txt").write_text(env.requirements_txt())
    if ca_bundle is not None:
        shutil.copyfile(ca_bundle, target / "ca-bundle.crt")
    return target / "Dockerfile"


# --------------------------------------------------------------------------- build and push

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class WorkerImage:
    """A built (and maybe pushed) worker image.

    Attributes:
        uri: what task definitions should name: ``REPO@sha256:...`` once pushed (a tag can
            be moved; a digest cannot), else the local tag.
        tag_uri: ``REPO:py3.11-<digest>-<arch>``.
        architecture: ECS ``runtimePlatform.cpuArchitecture``: ``"X86_64"`` or ``"ARM64"``.
    """

    uri: str
    tag_uri: str
    architecture: str


def ecs_architecture(docker_architecture: str) -> str:
    """``"X86_64"`` / ``"ARM64"`` for Docker's ``amd64`` / ``arm64`` (or a platform string).

    Raises:
        ImageBuildError: an architecture Fargate and ECS cannot run.
    """
    arch = docker_architecture.strip().rsplit("/", 1)[-1].lower()
    if docker_architecture.count("/") == 2:  # linux/arm64/v8
        arch = docker_architecture.split("/")[1].lower()
    try:
        return _ECS_ARCHITECTURES[arch]
    except KeyError:
        raise ImageBuildError(
            f"the image's architecture {docker_architecture!r} is neither amd64 nor arm64, "
            "the two ECS runs: build with --platform linux/amd64 or linux/arm64"
        ) from None


def ecr_registry(account: str, region: str) -> str:
    """The ECR registry host of an account in a region, partition-aware:
    ``ACCOUNT.dkr.ecr.REGION.amazonaws.com``, or ``...amazonaws.com.cn`` in China regions."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{suffix}"


def _tail(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return "\n".join(lines[-_STDERR_TAIL_LINES:]) or "(no output)"


def _run(
    runner: Runner, cmd: list[str], what: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        done = runner(cmd, input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ImageBuildError(f"{what} could not run `{shlex.join(cmd)}`: {exc}") from exc
    if done.returncode != 0:
        raise ImageBuildError(
            f"{what} failed (exit status {done.returncode}) running `{shlex.join(cmd)}`:\n"
            f"{_tail(done.stderr or done.stdout)}"
        )
    return done


_ECR_URI = re.compile(
    r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9][a-z0-9._/-]*$"
)


def _split_uri(repository_uri: str) -> tuple[str, str]:
    """``(registry, repository name)`` of ``ACCOUNT.dkr.ecr.REGION.amazonaws.com[.cn]/NAME``."""
    registry, _, name = repository_uri.partition("/")
    if not _ECR_URI.match(repository_uri):
        raise ValueError(
            f"{repository_uri!r} is not an ECR repository URI "
            "(ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME, .amazonaws.com.cn in China regions, "
            "without a tag)"
        )
    return registry, name


def _ecr_digest(aws: Aws, repository: str, tag: str) -> str | None:
    """The ``sha256:...`` digest of ``repository:tag`` in ECR, or None if there is no such tag."""
    try:
        found = aws.call(
            "ecr", "describe_images", repositoryName=repository, imageIds=[{"imageTag": tag}]
        )
    except AwsError as exc:
        if exc.code == "ImageNotFoundException":
            return None
        if exc.code == "RepositoryNotFoundException":
            raise AwsNotSetUpError(
                f"the ECR repository {repository} does not exist: run `starburst setup` (it "
                "creates it), or check ecr_repository in the profile"
            ) from exc
        raise
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def _which(docker: str) -> str:
    exe = shutil.which(docker)
    if exe is None:
        raise ImageBuildError(
            f"{docker} is not installed (or not on PATH): install Docker, or build the image "
            "elsewhere and pass image=..."
        )
    return exe


def build_image(
    env: Environment,
    tag: str,
    *,
    context_dir: Path,
    base_image: str | None = None,
    platform: str = DEFAULT_PLATFORM,
    source_dir: Path | None = None,
    ca_bundle: Path | None = None,
    docker: str = "docker",
    runner: Runner = subprocess.run,
) -> WorkerImage:
    """``docker build`` the worker image of ``env`` as ``tag`` (local only: no AWS call).

    The build context is written to ``context_dir`` (:func:`write_context`, with the host's CA
    bundle, :func:`host_ca_bundle`, unless ``ca_bundle`` names another) and built from
    ``worker/Dockerfile`` with ``BASE_IMAGE`` and ``--platform``; the built image's
    architecture is then read back and checked against the platform.

    ``platform="linux/arm64"`` makes an image for Graviton (ARM64 Fargate costs about 20%
    less). Building it on an x86 machine needs an emulator (binfmt/qemu) registered with the
    kernel, or an arm64 builder: the tests run on x86 without one and only build amd64.

    Args:
        env: the captured environment.
        tag: the image reference to build, e.g. ``REPO:py3.11-<digest>-amd64``.
        context_dir: an empty or scratch directory for the build context.
        base_image: a Python image with ``python`` and ``pip`` on PATH (default
            ``python:X.Y-slim`` of the client's Python).
        platform: ``linux/amd64`` (Fargate's default) or ``linux/arm64``.
        source_dir: the repository checkout to install from (default :func:`source_tree`).
        ca_bundle: a PEM bundle pip in the build should trust (default :func:`host_ca_bundle`).
        docker: the docker executable (``docker``, ``podman`` ...).
        runner: runs each command (``subprocess.run``'s signature).

    Raises:
        ImageBuildError: docker is missing, a docker command failed (its stderr tail shown),
            or the image came out for another architecture than ``platform``.
    """
    expected = ecs_architecture(platform)
    exe = _which(docker)
    dockerfile = write_context(
        env, context_dir, source_dir, ca_bundle=ca_bundle or host_ca_bundle()
    )
    base = base_image or f"python:{env.python_minor}-slim"
    _run(
        runner,
        [
            exe, "build", "--platform", platform,
            "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"STARBURST_ENVIRONMENT={env.digest}",
            "-t", tag, "-f", str(dockerfile), str(context_dir),
        ],
        "building the worker image",
    )  # fmt: skip
    inspected = _run(
        runner,
        [exe, "image", "inspect", "--format", "{{.Architecture}}", tag],
        "reading the built image's architecture",
    )
    architecture = ecs_architecture(inspected.stdout.strip() or "unknown")
    if architecture != expected:
        # The classic builder takes a local base image of another architecture as it is.
        raise ImageBuildError(
            f"the image {tag} came out {architecture} although --platform {platform} was "
            f"asked for: the base image {base} is built for another architecture; use one "
            f"for {platform}"
        )
    return WorkerImage(uri=tag, tag_uri=tag, architecture=architecture)


_PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def build_and_push(
    aws: Aws,
    repository_uri: str,
    env: Environment,
    *,
    context_dir: Path,
    source_dir: Path | None = None,
    base_image: str | None = None,
    platform: str = DEFAULT_PLATFORM,
    docker: str = "docker",
    runner: Runner = subprocess.run,
    push: bool = True,
    notify: Callable[[str], None] | None = None,
) -> WorkerImage:
    """Make sure ECR holds the worker image of ``env`` for ``platform``.

    The tag is ``py3.11-<digest>-<amd64|arm64>``. If it is already in ECR, nothing is built
    ("environment unchanged: reusing ..."). Otherwise ``docker login`` (with an ECR token,
    passed on stdin), :func:`build_image` and ``docker push``. With ``push=False`` only the
    local build runs (no AWS call) and the result names the local tag. The caller records
    ``uri`` and ``architecture`` in the profile (``AwsSettings.image``,
    ``AwsSettings.image_architecture``).

    Args:
        aws: the AWS client (ECR).
        repository_uri: ``ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME`` (:func:`ecr_registry`).
        env: the captured environment.
        context_dir: an empty or scratch directory for the build context.
        source_dir: the repository checkout to install from (default :func:`source_tree`).
        base_image: the ``BASE_IMAGE`` (default ``python:X.Y-slim`` of the client's Python).
        platform: ``linux/amd64`` (default) or ``linux/arm64`` (see :func:`build_image`).
        docker: the docker executable (``docker``, ``podman`` ...).
        runner: runs each command (``subprocess.run``'s signature).
        push: push to ECR (default), or build locally only.
        notify: receives one-line progress messages (default: the module logger).

    Returns:
        The image: once pushed, ``uri`` is digest-pinned (``REPO@sha256:...``).

    Raises:
        ImageBuildError: docker is missing, or a docker command failed (its stderr tail shown).
        AwsNotSetUpError: the ECR repository does not exist.
        ValueError: ``repository_uri`` is not an ECR repository URI.
    """
    say = notify or logger.info
    registry, repository = _split_uri(repository_uri)
    architecture = ecs_architecture(platform)
    tag = f"{env.tag}-{'amd64' if architecture == 'X86_64' else 'arm64'}"
    tag_uri = f"{repository_uri}:{tag}"
    if push:
        digest = _ecr_digest(aws, repository, tag)
        if digest:
            say(f"environment unchanged: reusing {tag_uri}")
            return WorkerImage(f"{repository_uri}@{digest}", tag_uri, architecture)
    exe = _which(docker)
    if push:
        data = aws.call("ecr", "get_authorization_token")["authorizationData"][0]
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        endpoint = str(data.get("proxyEndpoint") or registry)
        login_registry = endpoint.removeprefix("https://").removeprefix("http://")
        _run(
            runner,
            [exe, "login", "--username", user, "--password-stdin", login_registry],
            f"logging in to {login_registry}",
            stdin=password,
        )
    base = base_image or f"python:{env.python_minor}-slim"
    say(
        f"building the worker image {tag_uri} ({platform}, FROM {base}, "
        f"{len(env.requirements)} requirements)"
    )
    built = build_image(
        env, tag_uri, context_dir=context_dir, base_image=base, platform=platform,
        source_dir=source_dir, docker=exe, runner=runner,
    )  # fmt: skip
    if not push:
        return built
    say(f"pushing {tag_uri}")
    pushed = _run(runner, [exe, "push", tag_uri], "pushing the worker image")
    found = _PUSHED_DIGEST.search(pushed.stdout or "")
    digest = found.group(1) if found else _ecr_digest(aws, repository, tag)
    if not digest:
        raise ImageBuildError(
            f"pushed {tag_uri} but neither `docker push` nor ECR DescribeImages reported its "
            "digest: check the repository in the ECR console"
        )
    return WorkerImage(f"{repository_uri}@{digest}", tag_uri, built.architecture)
