"""The worker image: the client's environment captured, rendered into a Dockerfile, built and
pushed to ECR once per distinct environment. (Local modules shipped with one session,
Banyan's ``code_files``, are :mod:`starburst_executor.code_files`.)

- :func:`capture_environment` -> :class:`Environment`: the Python version and the
  requirements (a requirements file, or every installed distribution), with a digest that
  names the image (``py3.11-<digest>``): the same environment reuses the same image.
- :func:`render_dockerfile`: the repository's ``Dockerfile`` (``render_dockerfile(None)``) plus
  the captured requirements.
- :func:`build_and_push`: reuse the ECR image if the tag exists, else ``docker login``,
  ``docker build``, ``docker push``; each failure says which command failed and shows its
  stderr.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import json
import logging
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
    "Environment",
    "ImageBuildError",
    "build_and_push",
    "capture_environment",
    "render_dockerfile",
    "source_tree",
    "write_context",
]

logger = logging.getLogger(__name__)

_DIST_NAME = "starburst-executor"

_STDERR_TAIL_LINES = 25


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
        skipped: distributions left out of ``requirements`` and why (editable or local
            installs cannot be installed from an index; ship them with ``pack_code``).
    """

    python: str
    requirements: tuple[str, ...]
    source: str
    starburst_version: str
    package_digest: str = ""
    skipped: tuple[str, ...] = field(default=(), compare=False)

    @property
    def python_minor(self) -> str:
        """``"3.11"``: what the image's ``FROM python:X.Y-slim`` and the protocol check use."""
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
        """The image tag, ``py3.11-<digest>``."""
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


def _installed(exclude: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(requirements, skipped)`` from the distributions installed in this interpreter."""
    site_dirs = _site_dirs()
    pins: dict[str, str] = {}
    skipped: list[str] = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = _canonical_name(name)
        if key in pins or key in exclude or key == _DIST_NAME:
            continue  # the first on sys.path is the one imported; this package is built in
        direct = dist.read_text("direct_url.json")
        info: dict[str, Any] = json.loads(direct) if direct else {}
        if "vcs_info" in info:
            vcs = info["vcs_info"]
            pins[key] = f"{name} @ {vcs['vcs']}+{info['url']}@{vcs['commit_id']}"
        elif "dir_info" in info or str(info.get("url", "")).startswith("file:"):
            how = "editable" if info.get("dir_info", {}).get("editable") else "local"
            skipped.append(f"{name} ({how} install)")
        elif Path(str(dist.locate_file(""))).resolve() not in site_dirs:
            skipped.append(f"{name} (not in site-packages)")  # a legacy `setup.py develop`
        else:
            pins[key] = f"{name}=={dist.version}"
    return tuple(pins[k] for k in sorted(pins)), tuple(sorted(skipped))


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
            except this package (the image installs it from source) and editable or local
            installs (listed in ``Environment.skipped``).
        exclude: distribution names to leave out (e.g. packages for the client's OS only).

    Raises:
        ValueError: the requirements file references files or local paths the build cannot see.
        FileNotFoundError: ``requirements`` does not exist.
    """
    excluded = {_canonical_name(name) for name in exclude}
    skipped: tuple[str, ...] = ()
    if requirements is not None:
        lines = _read_requirements(Path(requirements))
        reqs = tuple(
            line
            for line in lines
            if _canonical_name(re.split(r"[\s<>=!~;@\[]", line, maxsplit=1)[0]) not in excluded
        )
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


# --------------------------------------------------------------------------- Dockerfile

_TEMPLATE = """\
# The starburst-executor worker image{what}.
# Build context: {context}.
{base}
ENV PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_ROOT_USER_ACTION=ignore
# Tasks run as an unprivileged user: nothing a worker does needs root.
RUN useradd --create-home --uid 10001 --user-group starburst
{requirements}\
COPY pyproject.toml README.md /tmp/starburst-src/
COPY starburst_executor /tmp/starburst-src/starburst_executor
RUN pip install --no-cache-dir /tmp/starburst-src && rm -rf /tmp/starburst-src
USER starburst
WORKDIR /home/starburst
ENTRYPOINT ["python", "-m", "starburst_executor.worker"]
"""

_REQUIREMENTS_BLOCK = """\
# The client's packages first: this layer is reused while they stay the same.
COPY requirements.txt /tmp/starburst-requirements.txt
RUN pip install --no-cache-dir -r /tmp/starburst-requirements.txt \\
    && rm /tmp/starburst-requirements.txt
"""


def render_dockerfile(env: Environment | None = None) -> str:
    """The worker image's Dockerfile.

    ``render_dockerfile(None)`` is the repository's plain ``Dockerfile`` (``ARG
    PYTHON_VERSION=3.11``; tests keep the two identical). With an environment: ``FROM
    python:{minor}-slim`` of the client's Python, and its requirements installed first.
    """
    if env is None:
        return _TEMPLATE.format(
            what="",
            context="this repository (pyproject.toml, README.md, starburst_executor/)",
            base="ARG PYTHON_VERSION=3.11\nFROM python:${PYTHON_VERSION}-slim",
            requirements="",
        )
    return _TEMPLATE.format(
        what=f" for one client environment ({env.tag})",
        context=(
            "requirements.txt, and the repository's pyproject.toml, README.md and "
            "starburst_executor/ (see write_context)"
        ),
        base=(
            f'FROM python:{env.python_minor}-slim\nLABEL io.starburst.environment="{env.digest}"'
        ),
        requirements=_REQUIREMENTS_BLOCK,
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
        Path(starburst_executor.__file__).resolve().parent, target / "starburst_executor",
        dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return target


def write_context(env: Environment, context_dir: Path, source_dir: Path | None = None) -> Path:
    """Fill ``context_dir`` with the build context: the rendered Dockerfile, requirements.txt,
    and ``pyproject.toml``, ``README.md`` and ``starburst_executor/`` from the source tree.

    Returns:
        The Dockerfile's path.

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
    context_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "pyproject.toml", context_dir / "pyproject.toml")
    shutil.copy2(source / "README.md", context_dir / "README.md")
    shutil.copytree(
        source / "starburst_executor",
        context_dir / "starburst_executor",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"),
    )
    if synthesized:
        shutil.rmtree(source)
    (context_dir / "requirements.txt").write_text(env.requirements_txt())
    dockerfile = context_dir / "Dockerfile"
    dockerfile.write_text(render_dockerfile(env))
    return dockerfile


# --------------------------------------------------------------------------- build and push

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _tail(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return "\n".join(lines[-_STDERR_TAIL_LINES:]) or "(no output)"


def _run(runner: Runner, cmd: list[str], what: str, stdin: str | None = None) -> None:
    try:
        done = runner(cmd, input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ImageBuildError(f"{what} could not run `{shlex.join(cmd)}`: {exc}") from exc
    if done.returncode != 0:
        raise ImageBuildError(
            f"{what} failed (exit status {done.returncode}) running `{shlex.join(cmd)}`:\n"
            f"{_tail(done.stderr or done.stdout)}"
        )


def _split_uri(repository_uri: str) -> tuple[str, str]:
    """``(registry, repository name)`` of ``ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME``."""
    registry, _, name = repository_uri.partition("/")
    if not name or ":" in name or "@" in name:
        raise ValueError(
            f"{repository_uri!r} is not an ECR repository URI "
            "(ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME, without a tag)"
        )
    return registry, name


def _image_exists(aws: Aws, repository: str, tag: str) -> bool:
    try:
        found = aws.call(
            "ecr", "describe_images", repositoryName=repository, imageIds=[{"imageTag": tag}]
        )
    except AwsError as exc:
        if exc.code == "ImageNotFoundException":
            return False
        if exc.code == "RepositoryNotFoundException":
            raise AwsNotSetUpError(
                f"the ECR repository {repository} does not exist: run `starburst setup` (it "
                "creates it), or check ecr_repository in the profile"
            ) from exc
        raise
    return bool(found.get("imageDetails"))


def build_and_push(
    aws: Aws,
    repository_uri: str,
    env: Environment,
    *,
    context_dir: Path,
    source_dir: Path | None = None,
    docker: str = "docker",
    runner: Runner = subprocess.run,
    push: bool = True,
    notify: Callable[[str], None] | None = None,
) -> str:
    """Make sure ECR holds the worker image of ``env``; return its URI (``REPO:py3.11-<digest>``).

    If the tag is already in ECR, nothing is built ("environment unchanged: reusing ...").
    Otherwise the context is written to ``context_dir`` (:func:`write_context`), then
    ``docker login`` (with an ECR token, passed on stdin), ``docker build`` and ``docker push``.
    With ``push=False`` only the local build runs (no ECR call). The caller records the URI in
    the profile (``AwsSettings.image``).

    Args:
        aws: the AWS client (ECR).
        repository_uri: ``ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME``.
        env: the captured environment.
        context_dir: an empty or scratch directory for the build context.
        source_dir: the repository checkout to install from (default :func:`source_tree`).
        docker: the docker executable (``docker``, ``podman`` ...).
        runner: runs each command (``subprocess.run``'s signature).
        notify: receives one-line progress messages (default: the module logger).

    Raises:
        ImageBuildError: docker is missing, or a docker command failed (its stderr tail shown).
        AwsNotSetUpError: the ECR repository does not exist.
        ValueError: ``repository_uri`` is not an ECR repository URI.
    """
    say = notify or logger.info
    registry, repository = _split_uri(repository_uri)
    uri = f"{repository_uri}:{env.tag}"
    if push and _image_exists(aws, repository, env.tag):
        say(f"environment unchanged: reusing {uri}")
        return uri
    exe = shutil.which(docker)
    if exe is None:
        raise ImageBuildError(
            f"{docker} is not installed (or not on PATH): install Docker, or build the image "
            "elsewhere and pass image=..."
        )
    dockerfile = write_context(env, context_dir, source_dir)
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
    say(
        f"building the worker image {uri} (Python {env.python_minor}, "
        f"{len(env.requirements)} requirements)"
    )
    _run(
        runner,
        [exe, "build", "-t", uri, "-f", str(dockerfile), str(context_dir)],
        "building the worker image",
    )
    if push:
        say(f"pushing {uri}")
        _run(runner, [exe, "push", uri], "pushing the worker image")
    return uri
