"""Where a result comes from: the code (git commit, and the diff when dirty), the packages and the
machine. Recorded on every tracked run (mlflow-free: benchmarks record it too)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["provenance", "PROJECT_DIR"]

PROJECT_DIR = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "timm", "transformers", "mlflow")


def provenance(project_dir: str | os.PathLike = PROJECT_DIR, ignored: Sequence[str] = ()) -> dict[str, Any]:
    """Where a result comes from: the code (git), the packages and the machine.

    Returns ``{"git_commit": str | None, "git_dirty": bool | None, "git_diff": str,
    "versions": {package: version}, "cuda": str | None, "device": str}``; the git fields are None
    outside a git work tree or without git. ``git_diff`` holds the changes against HEAD and lists
    untracked files, when dirty.

    Args:
        project_dir: the project's folder (the git work tree).
        ignored: folders of the work tree whose changes do not count (what the caller writes
            itself, such as the benchmarks' reports).
    """
    commit = _git(project_dir, "rev-parse", "HEAD")
    dirty, diff = None, ""
    if commit is not None:
        paths = ["--", ".", *(f":(exclude){folder}" for folder in ignored)]
        status = _git(project_dir, "status", "--porcelain", *paths) or ""
        dirty = bool(status.strip())
        if dirty:
            untracked = (_git(project_dir, "ls-files", "--others", "--exclude-standard", *paths) or "").split()
            diff = (_git(project_dir, "diff", "HEAD", *paths) or "") + "".join(f"# untracked: {p}\n" for p in untracked)
    import torch  # late: seconds to import, and only provenance needs it here

    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cuda = torch.cuda.is_available()
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": dirty,
        "git_diff": diff,
        "versions": versions,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine() or "cpu"),
    }


def _git(project_dir: str | os.PathLike, *args: str) -> str | None:
    """A git command's output, or None when git is missing or the folder is not a work tree."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=project_dir, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
