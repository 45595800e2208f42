# vaegan: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The python backend of the local Triton runs model.py in its own small environment:
# Triton 2.51's stub needs numpy<2 there, while the project itself uses numpy 2.
TRITON_ENV := $(VENV)-triton
TRITON_STAMP := $(TRITON_ENV)/.installed
OUT ?= outputs
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
PYTEST_ARGS ?=
# The demo trains on 32x32 emoji: on 2 CPU cores that buys 4x the steps of 64 px in the same
# ten minutes, which is what recognisable samples cost at this budget (cpu-quality is 64 px).
DEMO_SIZE ?= 32

.PHONY: help install triton-env browser check-extras proto proto-check test lint fuzz loadtest soak format demo demo-data demo-font evaluate triton bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is pinned in the training extra: the CPU wheel, not GBs of CUDA.
	$(BIN)/pip install -q -e '.[training,serving,playground,dev]'
	# Only the tritonserver binary of nvidia-pytriton is used; its numpy<2 pin would hold
	# the whole environment back, so it goes in without its dependencies.
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

$(TRITON_STAMP):
	test -d $(TRITON_ENV) || $(PYTHON) -m venv $(TRITON_ENV)
	$(TRITON_ENV)/bin/pip install -q 'numpy<2' onnxruntime
	touch $(TRITON_STAMP)

triton-env: $(TRITON_STAMP) ## the python backend's environment for the local Triton (.venv-triton)

install: $(STAMP) $(TRITON_STAMP) ## create .venv (and .venv-triton) and install the project with all extras

browser: ## playwright-core for the playground test (uses the system chromium: apt-get install chromium)
	cd tests/browser && npm install --no-audit --no-fund --silent

test: $(STAMP) $(TRITON_STAMP) ## run the test suite (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	# The gateway runs on uvloop where installed (--event-loop auto); its RPC tests run
	# again on asyncio's own loop, the fallback.
	VAEGAN_EVENT_LOOP=asyncio $(BIN)/python -m pytest -q tests/test_gateway.py tests/test_latent_rpc.py $(PYTEST_ARGS)

check-extras: ## install each extra alone in a fresh venv (as the Dockerfiles do) and run its commands
	bash scripts/check_extras.sh $(OUT)/check_extras

PROTO := proto/vaegan/v1/vaegan.proto

proto: $(STAMP) ## generate the gRPC stubs in vaegan/v1/ from proto/ (never edit them by hand)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

proto-check: $(STAMP) ## fail if the committed stubs differ from what make proto generates
	@tmp=$$(mktemp -d) && $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTO) \
	&& for f in vaegan_pb2.py vaegan_pb2.pyi vaegan_pb2_grpc.py; do \
		cmp -s $$tmp/vaegan/v1/$$f vaegan/v1/$$f || { echo "vaegan/v1/$$f is stale: run make proto"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "stubs match $(PROTO)"

BUF := tools/buf/node_modules/.bin/buf

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	cd tools/buf && npm ci --no-audit --no-fund --silent
	@touch $@

lint: $(STAMP) proto-check $(BUF) ## ruff check, format check, stubs up to date, buf lint and breaking-change check of proto/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd proto && ../$(BUF) lint && ../$(BUF) breaking --against released.binpb && echo "buf: proto/ lints clean and keeps the released API"

proto-release: $(BUF) ## record proto/ as the released API (proto/released.binpb): what buf breaking compares against
	cd proto && ../$(BUF) build -o released.binpb

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo-font: ## install Debian's colour emoji font for the demo data, where possible
	@if [ -f $(EMOJI_FONT) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q fonts-noto-color-emoji >/dev/null; }; \
	fi; \
	if [ ! -f $(EMOJI_FONT) ]; then \
		echo "The demo data needs Debian's fonts-noto-color-emoji. Install it with:"; \
		echo "  sudo apt-get install fonts-noto-color-emoji"; \
		echo "or run: $(BIN)/vaegan demo-data --out $(OUT)/demo_images --font /path/to/NotoColorEmoji.ttf"; \
		exit 1; \
	fi

$(OUT)/demo_images: | $(STAMP)
	$(MAKE) demo-font
	$(BIN)/vaegan demo-data --out $@.tmp && mv $@.tmp $@

demo-data: $(OUT)/demo_images ## render the emoji demo images (about 1,400 PNGs)

demo: $(STAMP) $(TRITON_STAMP) $(OUT)/demo_images ## prepare the demo data, train cpu-demo (2-6 min), write grids, export for Triton, serve
	$(BIN)/vaegan prepare $(OUT)/demo_images --out $(OUT)/demo_data --center-crop --size $(DEMO_SIZE) --overwrite
	rm -rf $(OUT)/demo_run
	$(BIN)/vaegan train --data $(OUT)/demo_data --out $(OUT)/demo_run --preset cpu-demo
	$(BIN)/vaegan export --checkpoint $(OUT)/demo_run/checkpoints/last.pt --repository $(OUT)/demo_repository --backend python --data $(OUT)/demo_data
	$(BIN)/vaegan attributes add face --with $(OUT)/demo_images/faces --without $(OUT)/demo_images/animals --repository $(OUT)/demo_repository --holdout 0.25
	$(BIN)/vaegan sweep $$(ls -d $(OUT)/demo_images/animals/* | head -4) --direction face --range -1 2 --repository $(OUT)/demo_repository --out $(OUT)/demo_sweep_face.png
	$(BIN)/vaegan sweep $$(ls -d $(OUT)/demo_images/faces/* | head -4) --direction pc1 --range -2 2 --repository $(OUT)/demo_repository --out $(OUT)/demo_sweep_pc1.png
	@echo
	@echo "Metrics:        $(OUT)/demo_run/metrics.jsonl"
	@echo "Sample grids:   $$(ls $(OUT)/demo_run/samples/*_samples.png | tail -1)"
	@echo "Reconstructions (original | reconstruction): $$(ls $(OUT)/demo_run/samples/*_recon.png | tail -1)"
	@echo "TensorBoard:    $(BIN)/tensorboard --logdir $(OUT)/demo_run/tb"
	@echo "Latent sweeps:  $(OUT)/demo_sweep_face.png (animals + face), $(OUT)/demo_sweep_pc1.png"
	@echo "Triton model repository: $(OUT)/demo_repository (serve it with: make triton)"
	$(BIN)/python scripts/serve_demo.py --repository $(OUT)/demo_repository --images $(OUT)/demo_images --out $(OUT)

evaluate: $(STAMP) ## FID and precision/recall of the demo model, n = 1,000 (~15 min on 2 cores; make demo first)
	@test -d $(OUT)/demo_repository || { echo "run 'make demo' first"; exit 1; }
	$(BIN)/vaegan evaluate --repository $(OUT)/demo_repository --data $(OUT)/demo_data --n 1000 --out $(OUT)/demo_evaluate.json

triton: $(STAMP) $(TRITON_STAMP) ## serve outputs/demo_repository with the local Triton (gRPC 8001, HTTP 8000, metrics 8002)
	$(BIN)/vaegan triton --repository $(OUT)/demo_repository

bench: $(STAMP) $(TRITON_STAMP) ## benchmarks on the demo model (run make demo first); results in outputs/bench/
	@test -f $(OUT)/demo_run/checkpoints/last.pt || { echo "run 'make demo' first"; exit 1; }
	mkdir -p $(OUT)/bench
	$(BIN)/python -m benchmarks.decoder_latency --checkpoint $(OUT)/demo_run/checkpoints/last.pt --out $(OUT)/bench/decoder_latency.json
	$(BIN)/python -m benchmarks.gateway_bench --repository $(OUT)/demo_repository --out $(OUT)/bench/gateway.json --chart $(OUT)/bench/gateway.png
	$(BIN)/python -m benchmarks.train_throughput --out $(OUT)/bench/train_throughput.json

loadtest: $(STAMP) $(TRITON_STAMP) ## load test at 0.7x and 3x capacity on the demo model (make demo first)
	@test -d $(OUT)/demo_repository || { echo "run 'make demo' first"; exit 1; }
	mkdir -p $(OUT)/bench
	$(BIN)/python -m benchmarks.grpc_floor --repository $(OUT)/demo_repository --out $(OUT)/bench/grpc_floor.json
	# Callers that do not back off, with 1 s and then 100 ms deadlines.
	$(BIN)/python -m benchmarks.loadtest --repository $(OUT)/demo_repository --out $(OUT)/bench/loadtest.json
	$(BIN)/python -m benchmarks.loadtest --repository $(OUT)/demo_repository --deadline 0.1 --out $(OUT)/bench/loadtest_100ms.json
	# Callers whose deadline is their latency budget and who throttle adaptively (k = 1.1).
	$(BIN)/python -m benchmarks.loadtest --repository $(OUT)/demo_repository --deadline 0.1 --client-throttle --throttle-k 1.1 --out $(OUT)/bench/loadtest_throttled.json
	# Calls of 8 embeddings, the batching queue and batches sized to the latency (Little's law).
	$(BIN)/python -m benchmarks.loadtest --repository $(OUT)/demo_repository --items 8 --out $(OUT)/bench/loadtest_items8.json -- --max-queue 16 --max-batch-size 16
	# Decompression bombs from one caller, small Encodes from another: the victim's latency and RSS.
	$(BIN)/python -m benchmarks.bombs --repository $(OUT)/demo_repository --out $(OUT)/bench/bombs.json

SOAK_MINUTES ?= 5
soak: $(STAMP) $(TRITON_STAMP) ## SOAK_MINUTES of steady load; gateway memory and descriptor slopes (make demo first)
	@test -d $(OUT)/demo_repository || { echo "run 'make demo' first"; exit 1; }
	mkdir -p $(OUT)/bench
	$(BIN)/python -m benchmarks.soak --repository $(OUT)/demo_repository --minutes $(SOAK_MINUTES) --out $(OUT)/bench/soak.json

FUZZ_SECONDS ?= 300
fuzz: $(STAMP) ## long fuzzing runs (FUZZ_SECONDS each) of image decoding and request handling
	mkdir -p $(OUT)/fuzz/image $(OUT)/fuzz/requests
	$(BIN)/python -m fuzz.seeds $(OUT)/fuzz/seeds
	$(BIN)/python -m fuzz.fuzz_image $(OUT)/fuzz/image $(OUT)/fuzz/seeds/image -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -artifact_prefix=$(OUT)/fuzz/
	$(BIN)/python -m fuzz.fuzz_requests $(OUT)/fuzz/requests $(OUT)/fuzz/seeds/requests -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -artifact_prefix=$(OUT)/fuzz/

clean: ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache
