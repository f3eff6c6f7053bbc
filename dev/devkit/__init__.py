"""devkit: the development package shared by the tests, the benchmark and the demo (never imported by the node pack,
never needed by users). Put `dev/` on sys.path, not the repository root: the root is the custom-node package, whose
`nodes` folder would shadow ComfyUI's own `nodes` module.

- locate: where the ComfyUI checkouts are
- comfy_boot: boot the real ComfyUI headless in this process and run API prompts through its executor
- ui_to_api: UI-format workflows -> API prompts (the pack's own instance/ui_to_api.py, loaded by file)
- server: the real ComfyUI server as a subprocess, over HTTP (tests, cold-start benchmark)
- models: random-weight FLUX / SDXL models with ComfyUI's own classes, and LoRAs for them
- widths: ComfyUI's loaders read narrow FLUX / SDXL widths from the tensors (the benchmark's CPU sizes)
- tiny_models, tiny_shim: tiny real-format models of every kind (FLUX, VAE, CLIP-L, T5, an SDXL checkpoint) and the
  shim that lets ComfyUI load them
- scratch: temporary folders removed when the process exits
- allocator: the C allocator settings every benchmark / demo process runs with (glibc's fixed thresholds)
"""
