"""Output folders, checked before the work that fills them: a typo should not cost a training run."""

from __future__ import annotations

import os
from pathlib import Path

from training.errors import OutputExistsError


def check_output_dir(folder: Path | str, option: str) -> Path:
    """Raise OutputExistsError unless `folder` can be created or written to; `option` names the flag."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return folder
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == folder else f"cannot be created: {existing} is a file"
        raise OutputExistsError(f"{option} {folder} {what}", hint=f"name a folder for {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputExistsError(
            f"{option} {folder} cannot be written: permission denied on {existing}",
            hint=f"name a folder you can write to for {option}",
        )
    return folder
