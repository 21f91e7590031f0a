# kiln build flavours. `make` builds build/kiln (Release). `make test` builds the tests under
# AddressSanitizer + UndefinedBehaviorSanitizer and runs them with CTest.
JOBS ?= $(shell nproc)
CMAKE ?= cmake
DEMO_MODEL ?= models/checkpoints/kiln-demo-tiny.safetensors

.PHONY: all kiln debug asan test test-gpu fuzz-smoke run setup setup-test demo install uninstall clean

all: kiln

kiln:
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
	$(CMAKE) --build build -j $(JOBS)

debug:
	$(CMAKE) -S . -B build/debug -DCMAKE_BUILD_TYPE=Debug >/dev/null
	$(CMAKE) --build build/debug -j $(JOBS)

asan:
	$(CMAKE) -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON >/dev/null
	$(CMAKE) --build build/asan -j $(JOBS)

test: setup-test asan
	cd build/asan && ctest --output-on-failure -j $(JOBS)

# The CUDA backend's tests (tests/gpu, CTest label gpu) in build/cuda: needs the CUDA toolkit
# and a GPU. CUDA_ARCHS picks the targets (default sm_80 and sm_90). KILN_GPU_BENCH=1 adds the
# SD 1.5 UNet timing.
CUDA_ARCHS ?= 80;90
test-gpu:
	$(CMAKE) -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHS)" >/dev/null
	$(CMAKE) --build build/cuda -j $(JOBS) --target gpu_tests
	cd build/cuda && ctest -L gpu --output-on-failure

# libFuzzer targets (tests/fuzz) built with clang in build/fuzz, each run FUZZ_SECONDS from its
# seed corpus; fails on any crash, leak or UB (tests/fuzz/smoke.sh says which input).
FUZZ_BUILD ?= build/fuzz
FUZZ_SECONDS ?= 10
fuzz-smoke:
	CC=clang $(CMAKE) -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKILN_FUZZ=ON >/dev/null
	$(CMAKE) --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets
	tests/fuzz/smoke.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

setup:
	scripts/setup

setup-test:
	scripts/setup --test

$(DEMO_MODEL): | kiln
	mkdir -p $(dir $(DEMO_MODEL))
	build/kiln ckpt --tiny $(DEMO_MODEL)

demo: kiln $(DEMO_MODEL)

# Install, build, make the demo model if missing, serve it on http://127.0.0.1:8188 (Ctrl-C stops).
# SERVE_ARGS adds options: make run SERVE_ARGS="--cpu-workers 3 --gpu-ports 8190"
SERVE_ARGS ?=
run: setup demo
	build/kiln serve --models-dir models $(SERVE_ARGS)

# Release build, then the binary, the systemd unit and the examples under PREFIX (deploy/install.cmake
# lists where); DESTDIR stages them elsewhere (packaging): make install PREFIX=/usr DESTDIR=/tmp/pkg
PREFIX ?= /usr/local
install: kiln
	DESTDIR="$(DESTDIR)" $(CMAKE) --install build --prefix "$(PREFIX)"

# Removes what the last `make install` wrote (build/install_manifest.txt lists it, without DESTDIR:
# give the same DESTDIR). Stop the service first: systemctl disable --now kiln
uninstall:
	@test -f build/install_manifest.txt || { echo "build/install_manifest.txt missing: nothing installed from this tree"; exit 1; }
	while IFS= read -r f || [ -n "$$f" ]; do rm -fv "$(DESTDIR)$$f"; done < build/install_manifest.txt

clean:
	rm -rf build
