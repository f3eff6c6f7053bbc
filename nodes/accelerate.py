"""ComfyUI glue shared by the nodes: install an engine.AcceleratedModel on a ModelPatcher as object patches.

Each compiled region is an object patch on `<block>.forward`: ComfyUI applies it when this patcher's model is
loaded and removes it when another patcher (an eager branch of the same model) is loaded, so the input model and
every other branch stay eager. The module tree is never changed, so LoRA keys and state_dict names stay intact, and
every caller of the diffusion model (apply_model, its wrappers, or a sampler calling it directly) runs the
compiled blocks.
"""
import os

from ..engine import compile_cache, log
from ..engine.backends import CompileOptions, select_backend
from ..engine.regional import AcceleratedModel, find_regions


CACHE_FOLDER = "deepytorch_cache"           # a model folder name: extra_model_paths.yaml can map it (to NAS/OSS)
CACHE_SUBDIR = "deepytorch-compile-cache"


def register_cache_folder():
    """Register the compile cache as ComfyUI model folder `deepytorch_cache` (default
    ComfyUI/models/deepytorch-compile-cache) unless extra_model_paths.yaml, read before custom nodes load, already
    mapped it. Idempotent."""
    import folder_paths
    if CACHE_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[CACHE_FOLDER] = ([os.path.join(folder_paths.models_dir, CACHE_SUBDIR)],
                                                             set())


def default_cache_dir():
    """The first path of model folder `deepytorch_cache`: inside ComfyUI's models dir, or wherever
    extra_model_paths.yaml maps it, so it lives on NAS/OSS with the models (DEEPYTORCH_CACHE_DIR overrides)."""
    import folder_paths
    register_cache_folder()
    return folder_paths.folder_names_and_paths[CACHE_FOLDER][0][0]


def remove_installed(patcher):
    """Drop DeepyTorch regions a previous node put on this (cloned) patcher: applying twice = applying once."""
    for key, value in list(patcher.object_patches.items()):
        if getattr(value, "deepytorch_region", None) is not None:
            del patcher.object_patches[key]


def accelerate(patcher, root_key, label, backend="auto", mode="default", dynamic="auto", fullgraph=False,
               scope="regional", parts=None, call_context=None, context=""):
    """Compile `root_key` of `patcher`'s model (lazily, on first use): its repeated blocks (scope 'regional'), all of
    it ('whole'), or the named sub-modules `parts`. `context`: what else shapes the traced code (the attention
    choice), part of the precompiled regions' key. Returns the AcceleratedModel, or None when running eager."""
    remove_installed(patcher)
    chosen = select_backend(backend, patcher.load_device, label)
    if chosen.name == "eager":
        log.info("%s: running eager (nothing compiled)", label)
        return None
    accelerated = saving(AcceleratedModel(label, chosen, CompileOptions(mode=mode, dynamic=dynamic,
                                                                        fullgraph=fullgraph, context=context),
                                          scope, call_context))
    root = patcher.get_model_object(root_key) if root_key else patcher.model
    kept = _not_replaced(patcher, root_key, label, list(parts) if parts else
                         [path for path, _ in find_regions(root, scope)])
    if not kept:
        return None
    for path, forward in accelerated.region_forwards(root, kept).items():
        patcher.add_object_patch(".".join(p for p in (root_key, path, "forward") if p), forward)
    return accelerated


def saving(accelerated):
    """`accelerated`, its compiled regions saved to the compile cache (the model folder `deepytorch_cache`)."""
    compile_cache.configure(default_cache_dir())
    accelerated.on_compiled = compile_cache.save_artifacts
    return accelerated


def _not_replaced(patcher, root_key, label, paths):
    """The region paths no other node replaced with an object patch (the block itself, its forward, or a module above
    it): those stay as the other node made them, said in the log. A patch of a part inside a block (XLabs'
    `double_blocks.N.processor`) is compiled with the block: the region calls what the model holds at run time."""
    others = [k for k, v in patcher.object_patches.items() if getattr(v, "deepytorch_region", None) is None]
    kept, left = [], []
    for path in paths:
        key = ".".join(p for p in (root_key, path) if p)
        hit = next((o for o in others if o in (key, key + ".forward") or key.startswith(o + ".")), None)
        if hit is None:
            kept.append(path)
        else:
            left.append(f"{path or '<whole model>'} (object patch '{hit}')")
    if left:
        log.info("%s: %d region(s) left as another node replaced them, not compiled: %s", label, len(left),
                 ", ".join(left))
    return kept
