"""Lay the installed package's shape as a tree of symbolic links, for tools that read source folders.

`pyproject.toml` installs `proxy/` as `shadowtap.proxy` (and `scorers/`, `sentinel/` likewise); mypy
reads folders, not import hooks, so it gets `build/typecheck/shadowtap/` with `proxy -> ../../../proxy`
and the same for every mapped folder. The links point at the real files: nothing is copied, and new
modules are seen without laying the tree again.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lay(out: Path) -> Path:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    base = ROOT / package_dir["shadowtap"]
    if out.exists():
        shutil.rmtree(out)
    tree = out / "shadowtap"
    tree.mkdir(parents=True)
    for entry in base.iterdir():
        if entry.name != "__pycache__":
            (tree / entry.name).symlink_to(entry)
    for package, folder in package_dir.items():
        if package != "shadowtap":
            (out / package.replace(".", "/")).symlink_to(ROOT / folder)
    return out


if __name__ == "__main__":
    print(lay(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "typecheck"))
