"""deploy/docker/Dockerfile: checked by structure, as no Docker engine runs here."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from textserve.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"
VALUES = REPO / "deploy" / "helm" / "textserve" / "values.yaml"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, its argument text and the stage it belongs to."""

    keyword: str
    args: str
    stage: str


def parse(text: str) -> list[Instruction]:
    """Instructions in order (comments dropped, continuation lines joined)."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "dangling line continuation"
    instructions = []
    stage = "(global)"
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


INSTRUCTIONS = parse(DOCKERFILE.read_text())


def _in(stage: str, keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == stage and i.keyword == keyword]


def _args(stage: str) -> dict[str, str]:
    """ARG defaults visible in a stage (global ARGs before the first FROM, then the stage's)."""
    found: dict[str, str] = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ARG" and instruction.stage in ("(global)", stage):
            name, _, default = instruction.args.partition("=")
            if default or name not in found:
                found[name] = default
    return found


def _env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in _in(stage, "ENV"):
        for item in shlex.split(instruction.args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["gpu"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_variant_is_a_build_argument_choosing_the_base() -> None:
    assert _args("(global)")["VARIANT"] == "cpu"
    stages = [i.stage for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert {"base-cpu", "base-cuda", "build", "runtime"} <= set(stages)
    assert stages[-1] == "runtime", "the last stage is the image"
    for stage in ("build", "runtime"):
        (from_,) = _in(stage, "FROM")
        assert from_.args.startswith("base-${VARIANT} "), from_.args
    cpu_base = _args("(global)")["CPU_BASE_IMAGE"]
    cuda_base = _args("(global)")["CUDA_BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", cpu_base), cpu_base
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", cuda_base), cuda_base
    assert "whl/cpu" in _env("base-cpu")["TORCH_INDEX_URL"]
    assert re.search(r"whl/cu\d+$", _env("base-cuda")["TORCH_INDEX_URL"])


def test_no_floating_base_tags() -> None:
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "FROM":
            assert ":latest" not in instruction.args
    for name, default in _args("(global)").items():
        if name.endswith("_IMAGE"):
            assert ":" in default and not default.endswith(":latest"), f"{name}={default}"


def test_pins_match_pyproject() -> None:
    pins = _pins()
    build = _args("build")
    assert build["TORCH_VERSION"] == pins["torch"]
    assert build["ONNXRUNTIME_VERSION"] == pins["onnxruntime"] == pins["onnxruntime-gpu"]


def test_build_installs_the_package_per_variant() -> None:
    (run,) = [i for i in _in("build", "RUN") if "pip install" in i.args and "torch==" in i.args]
    assert '--index-url "${TORCH_INDEX:-$TORCH_INDEX_URL}"' in run.args
    assert 'pip install ".[gpu]"' in run.args, "the cuda variant installs the gpu extra"
    assert "pip install . " in run.args, "the cpu variant installs the package"
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in run.args
    assert "CUDAExecutionProvider" in run.args and "torch.version.cuda" in run.args
    assert "textserve --help" in run.args, "the entrypoint must import"
    assert _env("build").get("PIP_NO_CACHE_DIR") == "1"
    copies = [i.args.split()[0] for i in _in("build", "COPY")]
    assert copies == ["pyproject.toml", "protos", "services"]


def test_runtime_runs_as_a_non_root_user() -> None:
    users = _in("runtime", "USER")
    assert users, "the runtime stage must switch user"
    args = _args("runtime")
    user = users[-1].args.replace("${UID}", args["UID"]).replace("${GID}", args["GID"])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert gid.isdigit() and int(gid) >= 1000
    chart = yaml.safe_load(VALUES.read_text())["global"]["podSecurityContext"]
    assert (chart["runAsUser"], chart["runAsGroup"]) == (int(uid), int(gid)), (
        "image and chart agree on the uid"
    )
    (create_user,) = [i for i in _in("runtime", "RUN") if "useradd" in i.args]
    assert '--uid "${UID}"' in create_user.args and "nologin" in create_user.args


def test_entrypoint_chooses_the_service_by_arguments() -> None:
    (entrypoint,) = _in("runtime", "ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["tini", "--", "textserve"], "exec form, tini as PID 1"
    (cmd,) = _in("runtime", "CMD")
    assert json.loads(cmd.args) == ["--help"]
    assert any("tini" in i.args for i in _in("runtime", "RUN"))


def test_no_healthcheck_the_chart_uses_grpc_probes() -> None:
    healthchecks = [i for i in INSTRUCTIONS if i.keyword == "HEALTHCHECK"]
    assert all(i.args.upper() == "NONE" for i in healthchecks)


def test_ports_and_environment() -> None:
    (expose,) = _in("runtime", "EXPOSE")
    assert sorted(int(p) for p in expose.args.split()) == [8080, 9090, 50051, 50052, 50053, 50054]
    env = _env("runtime")
    assert env["HF_HUB_OFFLINE"] == "1", "nothing is downloaded at run time"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["HF_HOME"].startswith("/var/cache/textserve/"), "the chart mounts a writable volume there"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "read-only root filesystem"
    # Every TEXTSERVE_* variable is read as a setting; the image must not set a bogus one.
    textserve_env = {k: v for k, v in env.items() if k.startswith("TEXTSERVE_")}
    load_settings(environ=textserve_env)


def test_models_are_baked_from_the_repository_or_mounted() -> None:
    copies = [i.args for i in _in("runtime", "COPY")]
    assert "deploy/docker/models/ /models/" in copies
    assert any(c.startswith("--from=build /opt/venv") for c in copies)
    assert (REPO / "deploy" / "docker" / "models" / "README.md").is_file()


# --- .dockerignore ----------------------------------------------------------------------
def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").rstrip("/")))
    return patterns


def _translate(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `**/` spans directories, `*` and `?` stay within one."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "[":
            end = pattern.index("]", index)
            out.append(pattern[index : end + 1])
            index = end + 1
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
        index += 1
    return "".join(out)


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's matching closely enough for our patterns; a pattern matching a parent
    directory matches everything under it."""
    regex = _translate(pattern)
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:depth])) for depth in range(1, len(parts) + 1))


def _excluded(path: str) -> bool:
    excluded = False
    for negate, pattern in _ignore_patterns():
        if _pattern_matches(pattern, path):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("services/textserve/cli.py", False),
        ("services/textserve/v1/embedding_pb2.py", False),
        ("protos/textserve/v1/embedding.proto", False),
        ("deploy/docker/models/README.md", False),
        ("deploy/docker/models/bge/config.json", False),
        ("services/textserve/__pycache__/cli.cpython-311.pyc", True),
        ("services/textserve.egg-info/PKG-INFO", True),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("tests/conftest.py", True),
        ("deploy/helm/textserve/values.yaml", True),
        ("loadtests/locustfile.py", True),
        (".env", True),
    ],
)
def test_dockerignore(path: str, excluded: bool) -> None:
    assert _excluded(path) is excluded


def test_every_copied_path_is_in_the_context() -> None:
    for instruction in INSTRUCTIONS:
        if instruction.keyword != "COPY" or instruction.args.startswith("--from"):
            continue
        source = instruction.args.split()[0].rstrip("/")
        assert not _excluded(source), f"COPY {source} is excluded by the .dockerignore"
        assert (REPO / source).exists(), f"COPY {source}: missing from the repository"


def test_fnmatch_sanity() -> None:
    """The ignore matcher agrees with fnmatch on single-segment patterns."""
    for name in ("a.pyc", "b.pyo", "c.py"):
        assert _pattern_matches("*.py[cod]", name) == fnmatch.fnmatch(name, "*.py[cod]")


def test_package_builds_from_the_build_context(tmp_path: Path) -> None:
    """`pip install .` in the image sees only what the .dockerignore lets through: that must
    be enough to build textserve (with its generated gRPC modules and the CLI)."""
    context = tmp_path / "context"
    for top in ("pyproject.toml", "README.md", "LICENSE", "protos", "services"):
        source = REPO / top
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in files:
            relative = path.relative_to(REPO).as_posix()
            if not _excluded(relative):
                target = context / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("textserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"textserve/cli.py", "textserve/v1/embedding_pb2_grpc.py", "textserve/core/config.py"} <= names
    assert not any("__pycache__" in name for name in names)
