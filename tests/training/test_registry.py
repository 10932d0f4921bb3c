"""The registry training writes into: names, immutability, atomicity and concurrent registrations.

Registrations here write the files a version needs by hand (the registry's contract does not depend
on what the adapter holds); tests/training/test_pipeline.py registers a really trained one.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorafleet.errors import RegistryError
from lorafleet.registry import AdapterRef, Draft, Registry, VersionInfo, adapter_digest

REPO = Path(__file__).resolve().parents[2]


def fill(draft: Draft, marker: str = "x") -> None:
    """The files a version must have: adapter/adapter_config.json, version.json, README.md."""
    draft.adapter_path.mkdir()
    (draft.adapter_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}\n')
    (draft.adapter_path / "adapter_model.safetensors").write_bytes(marker.encode() * 64)
    (draft.path / "README.md").write_text(f"---\nlorafleet: {{}}\n---\n# {draft.ref}\n")
    draft.write_json("version.json", info(draft.ref, marker))


def info(ref: AdapterRef, marker: str = "x") -> VersionInfo:
    return VersionInfo(
        name=str(ref),
        task=ref.task,
        number=ref.number,
        created_at=dt.datetime.now(dt.UTC),
        base_model="base",
        adapter_sha256="0" * 64,
        lora_rank=8,
        tags={"marker": marker},
    )


def register(reg: Registry, task: str, marker: str = "x") -> str:
    with reg.new_version(task) as draft:
        fill(draft, marker)
        name = str(draft.ref)
    return name


def _run(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_versions_are_named_task_vN_date_and_numbered_upwards(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    today = dt.date.today()
    names = [register(reg, "banking") for _ in range(3)]
    assert names == [f"banking-v{n}-{today:%Y%m%d}" for n in (1, 2, 3)]
    assert [v.name for v in reg.versions("banking")] == names
    assert AdapterRef.parse(names[-1]) == AdapterRef("banking", 3, today)
    assert reg.resolve("banking").name == names[-1]
    # Numbers are per task.
    assert register(reg, "refunds") == f"refunds-v1-{today:%Y%m%d}"


def test_a_failed_registration_leaves_nothing_and_its_number_is_never_reused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    first = register(reg, "banking")
    with pytest.raises(ValueError, match="training blew up"), reg.new_version("banking") as draft:
        fill(draft)
        failed = str(draft.ref)
        raise ValueError("training blew up")
    assert AdapterRef.parse(failed).number == 2
    with pytest.raises(RegistryError, match="incomplete"), reg.new_version("banking") as draft:
        (draft.path / "README.md").write_text("no adapter, no version.json")
    assert [v.name for v in reg.versions()] == [first]
    assert not any((tmp_path / ".staging").iterdir())
    assert AdapterRef.parse(register(reg, "banking")).number == 4


def test_registered_files_are_read_only_and_re_registering_never_overwrites(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    first = reg.get(register(reg, "banking", marker="a"))
    digest = adapter_digest(first.adapter_path)
    for p in first.path.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, p
    second = reg.get(register(reg, "banking", marker="b"))
    assert second.name != first.name
    assert adapter_digest(first.adapter_path) == digest
    assert adapter_digest(second.adapter_path) != digest
    assert (first.path / "version.json").read_text().count('"a"') == 1


KILLED = """
import sys, time
from lorafleet.registry import Registry
reg = Registry(sys.argv[1])
with reg.new_version("banking") as draft:
    draft.adapter_path.mkdir()
    (draft.adapter_path / "adapter_config.json").write_text("{}")
    (draft.path / "README.md").write_text("half written")
    print(draft.ref, flush=True)
    time.sleep(60)
    draft.write_json("version.json", {})
"""


def test_a_registration_killed_mid_write_leaves_no_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    kept = register(reg, "banking")
    proc = _run(KILLED, str(tmp_path))
    assert proc.stdout is not None
    claimed = proc.stdout.readline().strip()  # the child is inside the context manager now
    assert AdapterRef.parse(claimed).number == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [v.name for v in reg.versions()] == [kept]
    assert not (tmp_path / claimed).exists()
    with pytest.raises(RegistryError):
        reg.get(claimed)
    assert len(reg.clean_staging()) == 1
    assert AdapterRef.parse(register(reg, "banking")).number == 3  # the killed one's number stays taken


CONCURRENT = """
import datetime as dt, sys, time
from pathlib import Path
from lorafleet.registry import Registry, VersionInfo
root, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
with Registry(root).new_version("banking") as draft:
    draft.adapter_path.mkdir()
    (draft.adapter_path / "adapter_config.json").write_text("{}")
    (draft.path / "README.md").write_text("card")
    draft.write_json("version.json", VersionInfo(
        name=str(draft.ref), task="banking", number=draft.ref.number, created_at=dt.datetime.now(dt.UTC),
        base_model="base", adapter_sha256="0" * 64, lora_rank=8, tags={"pid": sys.argv[3]},
    ))
    name = str(draft.ref)
print(name, flush=True)
"""


def test_two_concurrent_registrations_of_one_task_get_different_numbers(tmp_path: Path) -> None:
    root, go = tmp_path / "registry", tmp_path / "go"
    procs = [_run(CONCURRENT, str(root), str(go), str(i)) for i in range(2)]
    time.sleep(1.0)  # both children are waiting on the go file
    go.touch()
    names = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        names.append(out.strip())
    assert len(set(names)) == 2
    assert sorted(AdapterRef.parse(n).number for n in names) == [1, 2]
    assert sorted(v.name for v in Registry(root).versions("banking")) == sorted(names)


def test_a_broken_version_folder_is_named_never_listed_or_resolved(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    good = register(reg, "banking")
    today = f"{dt.date.today():%Y%m%d}"
    (tmp_path / f"banking-v2-{today}").mkdir()  # copied by hand, half-way
    (tmp_path / f"banking-v2-{today}" / "version.json").write_text('{"name": "banking-v2"}')
    (tmp_path / f"refunds-v1-{today}").mkdir()
    assert [v.name for v in reg.versions()] == [good]
    assert [(v.name, why) for v, why in reg.broken()] == [
        (f"banking-v2-{today}", "no README.md"),
        (f"refunds-v1-{today}", "no version.json"),
    ]
    assert reg.resolve("banking").name == good
    with pytest.raises(
        RegistryError,
        match=re.escape(f"{tmp_path / f'refunds-v1-{today}'} is not a complete version: no version.json"),
    ):
        reg.resolve("refunds")
    with pytest.raises(RegistryError, match=r"no version\.json"):
        reg.get(f"refunds-v1-{today}")
    assert register(reg, "banking") == f"banking-v3-{today}"  # the broken folder's number is taken


def test_a_version_whose_adapter_config_is_not_json_is_broken(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    name = register(reg, "banking")
    config = tmp_path / name / "adapter" / "adapter_config.json"
    config.chmod(0o644)
    config.write_text('{"r": 8,\n')
    assert reg.versions() == []
    [(broken, why)] = reg.broken()
    assert broken.name == name and why.startswith("adapter/adapter_config.json cannot be read: Expecting")


def test_a_draft_that_fails_after_it_was_made_read_only_is_removed(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    name = register(reg, "banking")
    # The same name taken on disk: the rename fails after the draft's files were made read-only.
    with (
        pytest.raises(RegistryError, match="already exists"),
        reg.new_version("banking", dt.date.today()) as d,
    ):
        fill(d)
        (tmp_path / str(d.ref)).mkdir()
        (tmp_path / str(d.ref) / "taken").write_text("")
    assert list((tmp_path / ".staging").iterdir()) == []
    assert [v.name for v in reg.versions()] == [name]
