# vaegan: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
PYTEST_ARGS ?=

.PHONY: help install test lint format demo demo-data demo-font clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is pinned in the training extra: the CPU wheel, not GBs of CUDA.
	$(BIN)/pip install -q -e '.[training,serving,dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with all extras

test: $(STAMP) ## run the test suite (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

demo: $(STAMP) $(OUT)/demo_images ## prepare the demo data, train the cpu-demo preset, write sample grids
	$(BIN)/vaegan prepare $(OUT)/demo_images --out $(OUT)/demo_data --center-crop --overwrite
	rm -rf $(OUT)/demo_run
	$(BIN)/vaegan train --data $(OUT)/demo_data --out $(OUT)/demo_run --preset cpu-demo
	@echo
	@echo "Metrics:        $(OUT)/demo_run/metrics.jsonl"
	@echo "Sample grids:   $$(ls $(OUT)/demo_run/samples/*_samples.png | tail -1)"
	@echo "Reconstructions (original | reconstruction): $$(ls $(OUT)/demo_run/samples/*_recon.png | tail -1)"
	@echo "TensorBoard:    $(BIN)/tensorboard --logdir $(OUT)/demo_run/tb"

clean: ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache
