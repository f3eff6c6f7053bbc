"""Torch-only acceleration logic. Imports without ComfyUI (nothing here may import comfy.*)."""
