"""Boot the REAL ComfyUI headless in this process, load this package (and any extra custom-node packs the caller
names, e.g. the tests' test-only pack) as custom nodes the way ComfyUI does, and run API-format prompts through
ComfyUI's own validation and PromptExecutor. Used by the tests, the benchmark and the demo.

ComfyUI holds global state: one boot per process (the test matrix runs one pytest process per checkout).
Handles the async API of current ComfyUI and the sync one of Dec-2024 (v0.3.6 / v0.3.7) by feature detection.
"""
import asyncio
import inspect
import logging
import os
import sys
import uuid

from .locate import REPO_ROOT

PACKAGE_DIR_NAME = "ComfyUI-DeepyTorch"

# folder_paths names -> sub-folder of the models dir (the seed's layout: unet/, clip/, vae/, checkpoints/, loras/)
MODEL_FOLDERS = {"checkpoints": "checkpoints", "diffusion_models": "unet", "unet": "unet", "vae": "vae",
                 "controlnet": "controlnet", "clip_vision": "clip_vision",
                 "text_encoders": "clip", "clip": "clip", "loras": "loras"}


def _run(result):
    return asyncio.run(result) if inspect.iscoroutine(result) else result


class _HeadlessServer:
    """A stand-in for server.PromptServer (no HTTP): what PromptExecutor needs of it; it records the messages it is
    sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass

    def send_progress_text(self, *a, **k):
        pass


class Comfy:
    """A booted ComfyUI in this process. `packs`: [(folder name, directory)] of custom-node packs loaded before this
    package (their modules end up in `self.packs[name]`); `device`: 'cpu' adds --cpu, else ComfyUI picks the GPU."""

    def __init__(self, comfy_dir, base_dir, extra_argv=(), packs=(), device="cpu"):
        self.comfy_dir = os.path.abspath(comfy_dir)
        self.base_dir = base_dir
        self.models_dir = os.path.join(base_dir, "models")
        self.output_dir = os.path.join(base_dir, "output")
        self.input_dir = os.path.join(base_dir, "input")
        self.custom_nodes_dir = os.path.join(base_dir, "custom_nodes")
        self.extra_packs = list(packs)
        self._boot((["--cpu"] if device == "cpu" else []) + list(extra_argv))

    def _boot(self, argv):
        if self.comfy_dir not in sys.path:
            sys.path.insert(0, self.comfy_dir)
        import comfy.options  # noqa: F401  (keeps ComfyUI from parsing pytest's argv)
        import comfy.cli_args as cli_args
        args = cli_args.parser.parse_args(argv)
        if getattr(args, "fast", None) is None and hasattr(args, "fast"):
            args.fast = set()
        for k, v in vars(args).items():   # before comfy.model_management is imported
            setattr(cli_args.args, k, v)
        import folder_paths
        try:
            import utils.extra_config  # noqa: F401  (as main.py: keeps 'utils' bound to ComfyUI's package)
        except ImportError:
            pass
        for d in (self.output_dir, self.input_dir, self.custom_nodes_dir):
            os.makedirs(d, exist_ok=True)
        folder_paths.set_output_directory(self.output_dir)
        folder_paths.set_input_directory(self.input_dir)
        folder_paths.set_temp_directory(os.path.join(self.base_dir, "temp"))
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(os.path.join(self.base_dir, "user"))
        for name, sub in MODEL_FOLDERS.items():
            path = os.path.join(self.models_dir, sub)
            os.makedirs(path, exist_ok=True)
            try:
                folder_paths.add_model_folder_path(name, path, is_default=True)
            except TypeError:   # Dec-2024: no is_default
                folder_paths.add_model_folder_path(name, path)
        import comfy.model_management  # noqa: F401
        import execution
        import nodes
        import server  # noqa: F401  (main.py imports it before loading custom nodes)
        extra = {}
        if "init_api_nodes" in inspect.signature(nodes.init_extra_nodes).parameters:
            extra["init_api_nodes"] = False
        _run(nodes.init_extra_nodes(init_custom_nodes=False, **extra))
        # the caller's packs, then this package, loaded by ComfyUI's own custom-node loader
        for name, target in (*self.extra_packs, (PACKAGE_DIR_NAME, REPO_ROOT)):
            link = os.path.join(self.custom_nodes_dir, name)
            if not os.path.exists(link):
                os.symlink(target, link)
            ok = _run(nodes.load_custom_node(link))
            if ok is False:
                raise RuntimeError(f"ComfyUI failed to load custom node {link}")
        self.server = _HeadlessServer()
        if not hasattr(server.PromptServer, "instance"):
            server.PromptServer.instance = self.server
        params = inspect.signature(execution.PromptExecutor.__init__).parameters
        self.executor = (execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)
                         if "cache_type" in params else execution.PromptExecutor(self.server))
        self.execution = execution
        self.nodes = nodes
        # sys.modules name: the folder name (Dec-2024) or the folder path (current ComfyUI)
        self.package = self._module(PACKAGE_DIR_NAME)
        self.packs = {name: self._module(name) for name, _ in self.extra_packs}
        logging.getLogger("deepytorch").setLevel(logging.INFO)

    def _module(self, folder):
        init = os.path.join(self.custom_nodes_dir, folder, "__init__.py")
        return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == init)

    # -- prompts ------------------------------------------------------------------------------------------------
    def validate(self, prompt):
        params = inspect.signature(self.execution.validate_prompt).parameters
        args = [str(uuid.uuid4()), prompt] if "prompt_id" in params else [prompt]
        if "partial_execution_list" in params:
            args.append(None)
        return _run(self.execution.validate_prompt(*args))

    def run(self, prompt, fresh=True):
        """Execute an API prompt; returns the history entry ({'outputs': ...}). Raises with ComfyUI's error."""
        if fresh:
            self.executor.reset()
        valid = self.validate(prompt)
        if not valid[0]:
            raise RuntimeError(f"invalid prompt: {valid[1]} {valid[3]}")
        self.server.messages.clear()
        _run(self.executor.execute(prompt, str(uuid.uuid4()), {}, valid[2]))
        if not self.executor.success:
            errs = [m for m in self.executor.status_messages if m[0] == "execution_error"]
            if errs:
                e = errs[0][1]
                raise RuntimeError(f"execution failed: {e['exception_type']}: {e['exception_message']}\n"
                                   + "".join(e["traceback"]))
            raise RuntimeError(str(self.executor.status_messages))
        return self.executor.history_result

    def image(self, result, node):
        """The first image a SaveImage node wrote, as an int array HxWx3."""
        import numpy as np
        from PIL import Image
        f = result["outputs"][node]["images"][0]
        return np.asarray(Image.open(os.path.join(self.output_dir, f["subfolder"], f["filename"]))).astype(int)
