"""The worker image: environment capture, the Dockerfile, build-and-push with a fake docker
against moto's ECR, and a session's code shipped as a zip."""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from starburst_executor import code_files
from starburst_executor.aws import image
from starburst_executor.aws.client import Aws
from starburst_executor.aws.image import (
    Environment,
    build_and_push,
    capture_environment,
    render_dockerfile,
)
from starburst_executor.code_files import install_code, pack_code
from starburst_executor.errors import AwsNotSetUpError, ImageBuildError

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst-worker"
MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- environment


def test_capture_of_installed_distributions_is_deterministic() -> None:
    first, second = capture_environment(), capture_environment()
    assert first == second and first.digest == second.digest
    assert re.fullmatch(r"[0-9a-f]{12}", first.digest)
    assert first.tag == f"py{MINOR}-{first.digest}"
    assert first.python == ".".join(map(str, sys.version_info[:3]))
    assert first.source == "installed distributions"
    names = [re.sub(r"[-_.]+", "-", re.split(r"==| @ ", line)[0]).lower()
             for line in first.requirements]
    assert names == sorted(names)
    assert "boto3" in names and "starburst-executor" not in names
    pinned = dict(line.split("==", 1) for line in first.requirements if "==" in line)
    assert pinned["boto3"] == importlib.metadata.version("boto3")


def test_capture_excludes_named_distributions() -> None:
    env = capture_environment(exclude=["MOTO"])
    assert not any(line.lower().startswith("moto") for line in env.requirements)


def test_requirements_file_digest_follows_requirements_not_formatting(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0\npandas==2.2.3\n")
    base = capture_environment(reqs)
    assert base.requirements == ("numpy==2.1.0", "pandas==2.2.3")
    assert base.source == str(reqs)

    reqs.write_text("# pinned by pip-compile\nnumpy==2.1.0   # via pandas\n\npandas==2.2.3\n")
    assert capture_environment(reqs).digest == base.digest

    reqs.write_text("numpy==2.1.0\npandas==2.2.4\n")
    changed = capture_environment(reqs)
    assert changed.digest != base.digest and changed.tag != base.tag


def test_requirements_file_joins_hash_continuations(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0 \\\n    --hash=sha256:abc \\\n    --hash=sha256:def\nsix==1.16.0\n")
    env = capture_environment(reqs, exclude=["six"])
    assert env.requirements == ("numpy==2.1.0 --hash=sha256:abc --hash=sha256:def",)


def test_requirements_the_build_cannot_follow_are_refused(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0\n-r base.txt\n-e ./mylib\n")
    with pytest.raises(ValueError, match=r"-r base\.txt, -e \./mylib"):
        capture_environment(reqs)


def test_digest_ignores_the_patch_version_and_follows_the_minor() -> None:
    env = Environment(python="3.11.7", requirements=("a==1",), source="x",
                      starburst_version="0.1.0", package_digest="p")
    patched = Environment(python="3.11.9", requirements=("a==1",), source="y",
                          starburst_version="0.1.0", package_digest="p")
    assert patched.digest == env.digest
    newer = Environment(python="3.12.1", requirements=("a==1",), source="x",
                        starburst_version="0.1.0", package_digest="p")
    assert newer.digest != env.digest and newer.tag.startswith("py3.12-")


# --------------------------------------------------------------------------- Dockerfile


def test_rendered_dockerfile_matches_the_client(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0\n")
    text = render_dockerfile(capture_environment(reqs))
    lines = text.splitlines()
    assert lines[[line.startswith("FROM ") for line in lines].index(True)] == (
        f"FROM python:{MINOR}-slim")
    assert "ENV PYTHONUNBUFFERED=1 \\" in lines
    assert lines[-1] == 'ENTRYPOINT ["python", "-m", "starburst_executor.worker"]'
    users = [line for line in lines if line.startswith("USER ")]
    assert users == ["USER starburst"]
    assert lines.index("USER starburst") > max(
        i for i, line in enumerate(lines) if line.startswith("RUN "))  # no RUN as the user
    requirements_at = next(i for i, line in enumerate(lines)
                           if "pip install --no-cache-dir -r" in line)
    package_at = next(i for i, line in enumerate(lines)
                      if "pip install --no-cache-dir /tmp/starburst-src" in line)
    assert requirements_at < package_at  # the requirements layer survives package edits


def test_the_repository_dockerfile_is_the_plain_rendering() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert text == render_dockerfile(None)
    assert "ARG PYTHON_VERSION=3.11\nFROM python:${PYTHON_VERSION}-slim\n" in text
    assert "requirements.txt" not in text


# --------------------------------------------------------------------------- build and push

FAKE_DOCKER = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "--password-stdin" in args else None
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
if args and args[0] == os.environ.get("FAKE_DOCKER_FAIL"):
    sys.stderr.write("step 1/9\\nERROR: failed to solve: no space left on device\\n")
    sys.exit(1)
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``docker`` on PATH that records each call's argv (and stdin for login)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    return log


def calls(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def ecr(aws_env: str) -> Iterator[tuple[Aws, str]]:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    repo = aws.call("ecr", "create_repository", repositoryName="starburst-worker")
    yield aws, repo["repository"]["repositoryUri"]


@pytest.fixture
def captured(tmp_path: Path) -> Environment:
    # (not named `env`: that is the autouse fixture isolating tests from the machine)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("six==1.16.0\n")
    return capture_environment(reqs)


def test_build_and_push_logs_in_builds_and_pushes(
    ecr: tuple[Aws, str], captured: Environment, fake_docker: Path, tmp_path: Path,
) -> None:
    aws, repo_uri = ecr
    context = tmp_path / "context"
    messages: list[str] = []
    uri = build_and_push(aws, repo_uri, captured, context_dir=context, notify=messages.append)

    assert uri == f"{repo_uri}:{captured.tag}"
    registry = repo_uri.split("/", 1)[0]
    token = aws.call("ecr", "get_authorization_token")["authorizationData"][0]
    password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)[1]
    assert calls(fake_docker) == [
        {"argv": ["login", "--username", "AWS", "--password-stdin", registry],
         "stdin": password},  # the password travels on stdin, never in argv
        {"argv": ["build", "-t", uri, "-f", str(context / "Dockerfile"), str(context)],
         "stdin": None},
        {"argv": ["push", uri], "stdin": None},
    ]
    assert (context / "Dockerfile").read_text() == render_dockerfile(captured)
    assert (context / "requirements.txt").read_text() == "six==1.16.0\n"
    assert (context / "pyproject.toml").is_file() and (context / "README.md").is_file()
    assert (context / "starburst_executor" / "worker" / "__main__.py").is_file()
    assert not list(context.rglob("__pycache__"))
    assert messages[-1] == f"pushing {uri}"


def test_an_image_already_in_ecr_is_reused_without_docker(
    ecr: tuple[Aws, str], captured: Environment, fake_docker: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aws, repo_uri = ecr
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "size": 7023, "digest": "sha256:" + "a" * 64},
                "layers": []}
    aws.call("ecr", "put_image", repositoryName="starburst-worker",
             imageManifest=json.dumps(manifest), imageTag=captured.tag)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # docker is not even needed
    messages: list[str] = []
    uri = build_and_push(aws, repo_uri, captured, context_dir=tmp_path / "ctx",
                         notify=messages.append)
    assert uri == f"{repo_uri}:{captured.tag}"
    assert messages == [f"environment unchanged: reusing {uri}"]
    assert calls(fake_docker) == [] and not (tmp_path / "ctx").exists()


def offline() -> Aws:
    """An Aws client with no endpoint behind it: the tests using it must make no AWS call
    (``push=False`` builds locally only)."""
    return Aws("us-east-1", retry_sleep=lambda _: None)


def test_missing_docker_is_a_clear_error(
    captured: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ImageBuildError) as caught:
        build_and_push(offline(), REPO_URI, captured, context_dir=tmp_path / "ctx", push=False)
    assert str(caught.value) == ("docker is not installed (or not on PATH): install Docker, or "
                                 "build the image elsewhere and pass image=...")


def test_a_failed_docker_command_shows_its_stderr(
    captured: Environment, fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "build")
    with pytest.raises(ImageBuildError, match=r"(?s)building the worker image failed \(exit "
                       r"status 1\) running `.*docker build -t .*no space left on device"):
        build_and_push(offline(), REPO_URI, captured, context_dir=tmp_path / "ctx", push=False)
    assert [c["argv"][0] for c in calls(fake_docker)] == ["build"]  # type: ignore[index]


def test_build_only_makes_no_aws_call(captured: Environment, fake_docker: Path, tmp_path: Path) -> None:
    uri = build_and_push(offline(), REPO_URI, captured, context_dir=tmp_path / "ctx", push=False)
    assert [c["argv"][0] for c in calls(fake_docker)] == ["build"]  # type: ignore[index]
    assert uri == f"{REPO_URI}:{captured.tag}"


def test_a_missing_repository_points_at_setup(
    aws_env: str, captured: Environment, tmp_path: Path,
) -> None:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    with pytest.raises(AwsNotSetUpError, match="starburst setup"):
        build_and_push(aws, "123456789012.dkr.ecr.us-east-1.amazonaws.com/nope", captured,
                       context_dir=tmp_path / "ctx")


def test_a_source_dir_that_is_not_a_checkout_is_refused(captured: Environment, tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="not a starburst-executor checkout"):
        image.write_context(captured, tmp_path / "ctx", source_dir=tmp_path)


# --------------------------------------------------------------------------- session code


@pytest.fixture
def restore_imports() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def write_code(root: Path) -> list[Path]:
    (root / "sb_helper_mod.py").write_text("def double(x):\n    return 2 * x\n")
    package = root / "sb_helper_pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text(
        "from importlib.resources import files\n"
        "def greeting():\n    return files(__package__).joinpath('data.txt').read_text()\n")
    (package / "data.txt").write_text("hello from the zip")
    (package / "__pycache__" / "sub.cpython-311.pyc").write_bytes(b"junk")
    return [root / "sb_helper_mod.py", package]


def test_pack_and_install_code_round_trip(tmp_path: Path, restore_imports: None) -> None:
    source = tmp_path / "src"
    source.mkdir()
    paths = write_code(source)
    blob = pack_code(paths)
    assert pack_code(paths) == blob  # deterministic: same code, same blob
    assert sorted(zipfile.ZipFile(io.BytesIO(blob)).namelist()) == [
        "sb_helper_mod.py", "sb_helper_pkg/__init__.py", "sb_helper_pkg/data.txt",
        "sb_helper_pkg/sub.py"]

    target = tmp_path / "worker"
    target.mkdir()
    directory = install_code(blob, target)
    assert sys.path[0] == directory and Path(directory).parent == target
    assert importlib.import_module("sb_helper_mod").double(21) == 42
    assert importlib.import_module("sb_helper_pkg.sub").greeting() == "hello from the zip"


def test_pack_code_refuses_what_it_cannot_ship(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a Python module"):
        pack_code([tmp_path / "notes.txt"])
    with pytest.raises(FileNotFoundError):
        pack_code([tmp_path / "missing.py"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "m.py").write_text("")
    (tmp_path / "b" / "m.py").write_text("")
    with pytest.raises(ValueError, match="would both be 'm.py'"):
        pack_code([tmp_path / "a" / "m.py", tmp_path / "b" / "m.py"])
    (tmp_path / "big.py").write_bytes(os.urandom(4096))
    monkeypatch.setattr(code_files, "MAX_CODE_BYTES", 1024)
    with pytest.raises(ValueError, match=r"over 0\.000976562 MB zipped \(largest: big\.py"):
        pack_code([tmp_path / "big.py"])


def test_install_code_refuses_unsafe_zips(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.py", "x = 1")
    with pytest.raises(ValueError, match="unsafe entry"):
        install_code(buffer.getvalue(), tmp_path)
    with pytest.raises(ValueError, match="not a zip"):
        install_code(b"not a zip", tmp_path)


def test_context_from_an_installed_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip install starburst-executor` (no checkout): the image installs the installed files."""

    def no_checkout() -> Path:
        raise ImageBuildError("installed from a wheel")

    monkeypatch.setattr(image, "source_tree", no_checkout)
    env = capture_environment()
    dockerfile = image.write_context(env, tmp_path / "ctx")
    ctx = dockerfile.parent
    pyproject = (ctx / "pyproject.toml").read_text()
    assert 'name = "starburst-executor"' in pyproject
    assert "cloudpickle" in pyproject and "boto3" in pyproject  # its runtime dependencies
    assert "pytest" not in pyproject  # not the test extra
    assert (ctx / "starburst_executor" / "worker" / "__main__.py").is_file()
    assert not list(ctx.rglob("__pycache__"))
