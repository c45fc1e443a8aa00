"""aarch64 ONNX Runtime under qemu-user: check that exported models give the same outputs on ARM.

``build()`` makes ``<sparc cache>/arm-rootfs`` once (``python -m sparc.backends.arm``, run by
``make setup``):
1. ``debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11`` Debian
   bookworm (first stage only: no chroot, so no binfmt_misc is needed), then every downloaded
   package is unpacked with ``dpkg-deb -x``;
2. the aarch64 wheels of this machine's onnxruntime and numpy versions go to ``/opt/sparc-site``
   (``pip install --target --platform manylinux…aarch64``);
3. an ARM ``/proc/cpuinfo`` is placed in the rootfs: qemu 7.2 passes the host's x86 one
   through, and ONNX Runtime's cpuinfo parser crashes on it (``-L`` makes qemu read the
   rootfs file instead).
It is built in a sibling folder and renamed into place, so an interrupted build leaves nothing
half made. ``run(models, feeds)`` runs ONNX files there with ``qemu-aarch64-static -L rootfs``.
Emulated time says nothing about an ARM machine's speed: nothing here times anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sparc.errors import BackendError
from sparc.files import cache_dir

SUITE = "bookworm"
MIRROR = os.environ.get("SPARC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PYTHON = "usr/bin/python3.11"
SITE = "opt/sparc-site"
RUNNER = Path(__file__).with_name("arm_runner.py")
STAMP = ".sparc-arm.json"
BUILD_TIMEOUT_SECONDS = 1800
RUN_TIMEOUT_SECONDS = 3600
CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""


def folder() -> Path:
    return cache_dir() / "arm-rootfs"


def wanted_versions() -> dict[str, str]:
    """The onnxruntime and numpy versions the rootfs must hold: this machine's."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def is_built() -> bool:
    stamp = folder() / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()) == wanted_versions()


def build() -> Path:
    """Build the aarch64 rootfs unless one with this machine's versions exists; returns it."""
    target = folder()
    if is_built():
        return target
    debootstrap, dpkg_deb = (_tool(tool, "install Debian's debootstrap (make setup does)")
                             for tool in ("debootstrap", "dpkg-deb"))
    qemu()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _check([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3.11",
            SUITE, str(partial), MIRROR], "debootstrap (it needs root and Debian's package mirror)")
    for deb in sorted((partial / "var/cache/apt/archives").glob("*.deb")):
        _check([dpkg_deb, "-x", str(deb), str(partial)], f"dpkg-deb -x {deb.name}")
    (partial / "proc").mkdir(exist_ok=True)
    (partial / "proc/cpuinfo").write_text(CPUINFO)
    versions = wanted_versions()
    _check([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts", "--target",
            str(partial / SITE), "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
            "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
            *(f"{name}=={version}" for name, version in versions.items())], "pip (aarch64 wheels)")
    (partial / STAMP).write_text(json.dumps(versions))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def qemu() -> str:
    return _tool("qemu-aarch64-static", "install Debian's qemu-user-static (make setup does)")


def run(models: Mapping[str, str | Path], feeds: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, str]]:
    """Outputs of each ONNX file of ``models`` (name → path) on ``feeds``, from the aarch64
    ONNX Runtime under qemu, and the versions that ran them."""
    if not is_built():
        raise BackendError(f"no aarch64 rootfs with onnxruntime {wanted_versions()['onnxruntime']} in {folder()}; "
                           "build it with: python -m sparc.backends.arm")
    root = folder()
    with tempfile.TemporaryDirectory(prefix="sparc-arm-") as scratch:
        work = Path(scratch)
        np.savez(work / "inputs.npz", **{k: np.asarray(v) for k, v in feeds.items()})
        job = {"models": {name: str(Path(path).resolve()) for name, path in models.items()}}
        (work / "job.json").write_text(json.dumps(job))
        environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"/{SITE}", "PYTHONNOUSERSITE": "1",
                       "OMP_NUM_THREADS": "1"}
        done = subprocess.run([qemu(), "-L", str(root), str(root / PYTHON), "-P", str(RUNNER.resolve()), str(work)],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, env=environment)
        if done.returncode != 0:
            raise BackendError(f"aarch64 ONNX Runtime under qemu failed on {', '.join(job['models'].values())}: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
        outputs = {}
        for name in models:
            with np.load(work / f"{name}.npz") as archive:
                outputs[name] = {key: archive[key] for key in archive.files}
        return outputs, json.loads((work / "versions.json").read_text())


def _check(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise BackendError(f"building the aarch64 rootfs: {what} failed: {(done.stderr or done.stdout).strip()[-600:]}")


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise BackendError(f"{name} is not installed; {hint}")
    return path


if __name__ == "__main__":
    build()
