# kiln build flavours. `make` builds build/kiln (Release). `make test` builds the tests under
# AddressSanitizer + UndefinedBehaviorSanitizer and runs them with CTest.
JOBS ?= $(shell nproc)
CMAKE ?= cmake
DEMO_MODEL ?= models/checkpoints/kiln-demo-tiny.safetensors

.PHONY: all kiln debug asan test run setup demo clean

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

test: asan
	cd build/asan && ctest --output-on-failure -j $(JOBS)

setup:
	scripts/setup

$(DEMO_MODEL): | kiln
	mkdir -p $(dir $(DEMO_MODEL))
	build/kiln ckpt --tiny $(DEMO_MODEL)

demo: kiln $(DEMO_MODEL)

# Install, build, make the demo model if missing, serve it on http://127.0.0.1:8188 (Ctrl-C stops).
# SERVE_ARGS adds options: make run SERVE_ARGS="--cpu-workers 3 --gpu-ports 8190"
SERVE_ARGS ?=
run: setup demo
	build/kiln serve --models-dir models $(SERVE_ARGS)

clean:
	rm -rf build
