"""Install DeepSparse 1.8.0 (the peer runtime of benchmarks/deepsparse_peer.py) in its own venv.

DeepSparse pins numpy 1.26 and onnx 1.14, which sparc's environment cannot share, so it
lives in a separate virtual environment: ``$SPARC_CACHE/deepsparse-venv`` by default
(``$SPARC_CACHE`` defaults to ``~/.cache/sparc``, as in ``sparc.files.cache_dir``). The script
creates the venv, runs ``pip install deepsparse==1.8.0`` (1.9.0 on PyPI is an empty stub) and
checks that ``from deepsparse import compile_model`` works. Running it again when that check
already passes does nothing. It uses the standard library only and runs with any Python 3.8–3.11
(DeepSparse has no wheels for newer Pythons); the venv is made with the interpreter that runs
this script unless ``--python`` names another one.

Usage: python3.11 benchmarks/install_deepsparse.py [--venv PATH] [--python python3.11] [--force]
Prints the venv's python path on its last line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "1.8.0"
CHECK = ("import deepsparse; from deepsparse import compile_model; "
         "print(deepsparse.__version__)")


def cache_dir() -> Path:
    """``$SPARC_CACHE``, else ``~/.cache/sparc`` (the default of ``sparc.files.cache_dir``)."""
    return Path(os.environ.get("SPARC_CACHE", Path.home() / ".cache" / "sparc"))


def default_venv() -> Path:
    return cache_dir() / "deepsparse-venv"


def venv_python(venv: str | os.PathLike | None = None) -> Path:
    """The python executable of the DeepSparse venv (it may not exist yet)."""
    venv = Path(venv) if venv else default_venv()
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def deepsparse_env() -> dict[str, str]:
    """The environment DeepSparse runs in: the current one with its usage analytics off."""
    env = dict(os.environ)
    env["NM_DISABLE_ANALYTICS"] = "1"
    return env


def installed_version(python: Path) -> str | None:
    """DeepSparse's version if ``python`` imports ``compile_model``, else None."""
    if not python.is_file():
        return None
    done = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, env=deepsparse_env(),
                          check=False)
    if done.returncode != 0:
        return None
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None


def install(venv: Path, interpreter: str, force: bool = False) -> Path:
    python = venv_python(venv)
    version = installed_version(python)
    if version == VERSION and not force:
        print(f"deepsparse {version} is already installed in {venv}", file=sys.stderr)
        return python
    if force and venv.exists():
        shutil.rmtree(venv)
    if not python.is_file():
        venv.parent.mkdir(parents=True, exist_ok=True)
        print(f"creating the venv {venv} with {interpreter}", file=sys.stderr)
        subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, env=deepsparse_env())
    subprocess.run([*pip, f"deepsparse=={VERSION}"], check=True, env=deepsparse_env())
    version = installed_version(python)
    if version is None:
        done = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, env=deepsparse_env(),
                          check=False)
        sys.exit(f"deepsparse was installed in {venv} but `from deepsparse import compile_model` fails:\n"
                 f"{done.stderr.strip()}")
    if version != VERSION:
        sys.exit(f"{venv} has deepsparse {version}, expected {VERSION}; rerun with --force")
    print(f"deepsparse {version} installed in {venv}", file=sys.stderr)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=None, help=f"default: {default_venv()}")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter to create the venv with (Python 3.8-3.11; default: this one)")
    parser.add_argument("--force", action="store_true", help="delete the venv and install again")
    args = parser.parse_args()
    print(install(args.venv or default_venv(), args.python, args.force))


if __name__ == "__main__":
    main()
