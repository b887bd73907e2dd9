"""Refresh ``constraints.txt``, the lock file that CI and the README's install line use.

    python tools/refresh_lock.py [--python python3] [--keep-venv] [--no-tests] [-- PYTEST ARGS]

Resolves the newest releases that the package's dependency ranges allow (every extra in
``pyproject.toml``), in a fresh virtual environment made from scratch, runs the test suite in it,
and writes ``constraints.txt`` only when the suite passes. torch stays the CPU build pinned in
``TORCH`` (``pip install torch==2.13.0`` takes it from this machine's disk; any other request
for torch pulls a several-GB CUDA build). A failing suite leaves the old lock untouched and
prints which packages changed, so the release that broke something can be found.

The lock is for the interpreter and platform it ran on (CI's: CPython 3.11, Linux x86_64); a
user elsewhere installs without ``-c constraints.txt`` and gets the newest releases, which this
script is how we check.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
TORCH = "torch==2.13.0"


def extras() -> list[str]:
    """Every optional-dependency group of the package (the lock covers all of them)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project.get("optional-dependencies", {}))


def pins(text: str) -> dict[str, str]:
    """``name -> line`` of a ``pip freeze`` output or lock file (comments and editables dropped)."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ")) or "==" not in line:
            continue
        name = line.split("==", 1)[0].strip().lower().replace("_", "-")
        found[name] = line
    return found


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=False, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv")
    parser.add_argument("--keep-venv", action="store_true", help="keep the temporary venv")
    parser.add_argument("--no-tests", action="store_true",
                        help="write the lock without running the suite (not for commits)")
    parser.add_argument("pytest_args", nargs="*", default=["-q", "-n", "2"],
                        help="arguments for pytest (default: -q -n 2, the README's command)")
    args = parser.parse_args()

    venv = Path(tempfile.mkdtemp(prefix="msakit-lock-"))
    try:
        if run([args.python, "-m", "venv", str(venv)]).returncode:
            return 2
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        # torch stays the CPU build: an eager upgrade would otherwise replace it by the newest
        # release the ranges allow, a several-GB CUDA build
        keep_torch = venv / "keep-torch.txt"
        keep_torch.write_text(TORCH + "\n")
        steps = [
            [*pip, "install", "--quiet", "--upgrade", "pip"],
            [*pip, "install", "--quiet", TORCH],
            # --upgrade-strategy eager: the newest release of every dependency the ranges allow
            [*pip, "install", "--quiet", "--upgrade", "--upgrade-strategy", "eager",
             "-c", str(keep_torch), "-e", f"{ROOT}[{','.join(extras())}]"],
        ]
        for step in steps:
            if run(step).returncode:
                print("installing the newest releases failed; the lock is unchanged")
                return 1
        frozen = run([*pip, "freeze", "--exclude-editable"], capture_output=True, text=True).stdout
        new = pins(frozen)
        new["torch"] = TORCH  # the local version label (+cpu) is the file's, not the request's
        old = pins(LOCK.read_text()) if LOCK.exists() else {}
        changed = sorted(name for name in new.keys() | old.keys() if new.get(name) != old.get(name))
        for name in changed:
            print(f"  {old.get(name, '(none)'):45} -> {new.get(name, '(removed)')}")
        if not changed:
            print("the newest releases are the locked ones")
        if not args.no_tests:
            environment = {**os.environ, "VIRTUAL_ENV": str(venv),
                           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
            tested = run([str(venv / "bin" / "python"), "-m", "pytest", *args.pytest_args],
                         cwd=ROOT, env=environment)
            if tested.returncode:
                print("the suite fails with the newest releases; the lock is unchanged. "
                      "Changed packages are listed above.")
                return 1
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        header = [
            "# The lock: exact versions of the whole dependency tree, every extra included.",
            f"# Written by tools/refresh_lock.py on {stamp}"
            + ("" if args.no_tests else " after the test suite passed with them") + ";",
            f"# CPython {platform.python_version()} on {platform.system()} {platform.machine()}.",
            "# Install: pip install torch==2.13.0 && pip install -c constraints.txt -e '.[...]'",
        ]
        LOCK.write_text("\n".join(header + [new[name] for name in sorted(new)]) + "\n")
        print(f"wrote {LOCK} ({len(new)} packages)")
        return 0
    finally:
        if args.keep_venv:
            print(f"venv kept: {venv}")
        else:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
