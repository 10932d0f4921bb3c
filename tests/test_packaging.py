"""The distribution ships exactly lorafleet's packages, and no other installed one claims their names."""

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGES = {"lorafleet", "training", "serve", "router", "monitor"}
ROOT = Path(__file__).resolve().parents[1]


def test_no_other_distribution_owns_our_package_names() -> None:
    owners = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        # An editable install registers no top-level names; a wheel registers ["lorafleet"].
        assert owners.get(name, ["lorafleet"]) == ["lorafleet"], (name, owners.get(name))


def test_wheel_holds_exactly_the_five_packages(tmp_path: Path) -> None:
    subprocess.run(
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
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lorafleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == PACKAGES
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lorafleet = lorafleet.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
