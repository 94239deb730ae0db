"""`shadowzoo init`: a new workspace, copied from the bundled demo workspace."""

from __future__ import annotations

import shutil
from pathlib import Path

from registry import CONFIG_FILE, ShadowzooError

TEMPLATE = Path(__file__).resolve().parent.parent / "examples" / "demo"
_SKIP = shutil.ignore_patterns(".shadowzoo", "__pycache__", "*.duckdb*", "report.html")


def init_workspace(target: Path) -> Path:
    """Copy the demo workspace into `target` (new or empty); refuse to overwrite a workspace."""
    if not (TEMPLATE / CONFIG_FILE).is_file():
        raise ShadowzooError(f"the workspace template is missing from {TEMPLATE}; reinstall shadowzoo from its source tree")
    if (target / CONFIG_FILE).exists():
        raise ShadowzooError(f"{target / CONFIG_FILE} already exists: {target} is a workspace already")
    if target.exists() and any(target.iterdir()):
        raise ShadowzooError(f"{target} exists and is not empty; choose a new or empty directory")
    shutil.copytree(TEMPLATE, target, ignore=_SKIP, dirs_exist_ok=True)
    return target.resolve()
