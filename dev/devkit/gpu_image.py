"""The borrowed GPU machine's Python (the device tool's KINDS.md, package list read there on 2026-11-17: Python
3.12 with its own torch, no package registry), to rehearse a GPU run on this machine: block() makes every installed
distribution outside that list and the carried wheels unimportable in this process, so what ComfyUI and the benchmark
need from outside the image shows up here, not in the 15 minutes of a GPU lease."""
import importlib.abc
import importlib.metadata
import re
import sys

IMAGE = set("""
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-
    cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-
    operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
    mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
    numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
    nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
    patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-
    cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-
    data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
    torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-
    inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# What scripts/prepare-gpu-carry carries as wheels: ComfyUI's imports the image lacks (from its requirements.txt;
# the rest of that file is on the image, or only for nodes the benchmark does not use): torchsde
# (comfy.k_diffusion.sampling) and its trampoline, av (comfy_api, which `execution` imports). Versions as in this
# project's environment.
CARRIED = {"torchsde": "0.2.6", "trampoline": "0.1.2", "av": "18.1.0"}


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, blocked):
        self.blocked = blocked

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.blocked:
            raise ModuleNotFoundError(f"No module named '{name}' (rehearsal: {self.blocked[top]} is not on the GPU "
                                      "machine's image and not carried)", name=name)
        return None


def _with_requirements(names):
    """`names` and, transitively, what the versions installed here require (the image's own versions come with
    what they need: a package here may need one the image's version does not, e.g. a newer huggingface-hub)."""
    seen, todo = set(), [normalize(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [normalize(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r]
    return seen


def block(carried=()):
    """Make the distributions outside IMAGE and `carried` (and what they require) unimportable here. Returns
    {module: distribution}."""
    allowed = _with_requirements(IMAGE | set(carried))
    blocked = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        if not any(normalize(d) in allowed for d in dists):
            blocked[module] = dists[0]
    for module in [m for m in sys.modules if m.partition(".")[0] in blocked]:
        del sys.modules[module]
    sys.meta_path.insert(0, _Blocker(blocked))
    return blocked
