#!/usr/bin/env bash
# Check that an aarch64 TVM library exported by sparc on this x86_64 machine really runs:
# run it with an aarch64 Python + aarch64 TVM wheels under qemu user-mode emulation and
# compare its output with the host's.
#
#   bash benchmarks/aarch64_qemu_check.sh        (prints the max abs difference, PASS/FAIL)
#
# Needs (Debian 12): qemu-user-static and gcc-aarch64-linux-gnu, plus the project venv (or
# any python with sparc, torch and apache-tvm). Nothing is installed system-wide: the arm64
# .debs are fetched with a private apt state and unpacked with `dpkg -x`, and the arm64
# wheels are unzipped; everything lives in $SPARC_CACHE/arm64 (default ~/.cache/sparc/arm64)
# and is reused on the next run; the test library is rebuilt every time. Override the tolerance with TOL=... (default 1e-4).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SPARC_CACHE:-$HOME/.cache/sparc}/arm64
TOL=${TOL:-1e-4}
PY=${PYTHON:-$HERE/.venv/bin/python}
[ -x "$PY" ] || PY=python3
ROOT=$CACHE/root      # aarch64 sysroot (python3.11 + shared libraries)
SITE=$CACHE/site      # unzipped aarch64 wheels (PYTHONPATH under qemu)
WORK=$CACHE/test      # test library and reference data
mkdir -p "$CACHE/debs" "$CACHE/wheels" "$ROOT" "$SITE" "$WORK"

for tool in qemu-aarch64-static aarch64-linux-gnu-gcc apt-get dpkg; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install qemu-user-static gcc-aarch64-linux-gnu)"; exit 2; }
done

# 1. aarch64 Python 3.11 sysroot from Debian bookworm arm64 packages -------------------
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    APT=$CACHE/apt
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/parts" "$APT/prefs.d"
    : > "$APT/status"
    key="signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"
    {
        echo "deb [arch=arm64 $key] http://deb.debian.org/debian bookworm main"
        echo "deb [arch=arm64 $key] http://deb.debian.org/debian bookworm-updates main"
        echo "deb [arch=arm64 $key] http://deb.debian.org/debian-security bookworm-security main"
    } > "$APT/sources.list"
    # A private apt configuration: arm64 only, its own lists/status; /etc/apt is not touched.
    cat > "$APT/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Sandbox::User "root";
Dir::State "$APT"; Dir::State::Lists "$APT/lists"; Dir::State::status "$APT/status";
Dir::Cache "$APT/cache";
Dir::Etc::SourceList "$APT/sources.list"; Dir::Etc::SourceParts "$APT/parts";
Dir::Etc::Parts "$APT/parts"; Dir::Etc::PreferencesParts "$APT/prefs.d";
EOF
    export APT_CONFIG=$APT/apt.conf
    apt-get update -qq
    # python3.11-minimal + libpython3.11-stdlib and their library dependencies (bookworm).
    (cd "$CACHE/debs" && apt-get download -qq \
        python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types \
        libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libzstd1 \
        libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libdb5.3 libgdbm6 \
        libgdbm-compat4 libcrypt1 libnsl2 libtirpc3 libtirpc-common libgssapi-krb5-2 \
        libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1)
    unset APT_CONFIG
    for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
fi
run_arm() { PYTHONPATH=$SITE PYTHONNOUSERSITE=1 qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"; }
run_arm -c 'import platform; assert platform.machine() == "aarch64"'

# 2. aarch64 wheels of TVM and its runtime dependencies, same versions as the host -----
if [ ! -d "$SITE/tvm" ]; then
    pins=$("$PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions")))
EOF
)
    "$PY" -m pip download -q --only-binary=:all: --no-deps --python-version 3.11 \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
        -d "$CACHE/wheels" $pins
    for whl in "$CACHE"/wheels/*.whl; do "$PY" -m zipfile -e "$whl" "$SITE"; done
fi

# 3. Host: export a small block-sparse MLP for aarch64 (BSR and dense kernels, fused
#    Gelu/Relu epilogues) and save its input and host output ------------------------------
cd "$WORK"
"$PY" - <<'EOF'
import json, numpy as np, torch, sparc
from torch import nn
from sparc.passes import BlockSparsity
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
c = sparc.compile(m, example_inputs=(torch.from_numpy(x),), latency_rounds=0,
                  recipe=[BlockSparsity(block=(16, 1), density=0.3)])
c.export_library("mlp.so", {c.input_names[0]: x.shape}, target="aarch64")
print("layouts:", *json.load(open("mlp.so.json"))["layouts"], sep="\n  ")
np.save("x.npy", x)
np.save("y.npy", c(x))
EOF

# 4. Emulated aarch64: load the library in the Relax VM and compare ---------------------
run_arm - "$TOL" <<'EOF'
import sys, numpy as np, tvm
from tvm import relax
x, y = np.load("x.npy"), np.load("y.npy")
vm = relax.VirtualMachine(tvm.runtime.load_module("mlp.so"), tvm.cpu())
out = vm["main"](tvm.runtime.tensor(x))
out = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
diff = float(np.abs(out - y).max())
ok = out.shape == y.shape and diff <= float(sys.argv[1])
print(f"aarch64 (qemu) vs host: max abs diff {diff:.3g} -> {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
