"""Fixtures that boot the REAL ComfyUI once per pytest process (one checkout per process: see scripts/test-matrix)."""
import logging
import os

import pytest

from devkit import locate
from harness.server import TESTPACK


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    found = locate.checkouts()
    if not found:
        pytest.skip(locate.HOW_TO_GET)
    name, path = found[-1]   # scripts/test-matrix sets COMFYUI_PATH per checkout; a bare pytest run takes the newest
    # never write the compile cache into the (shared, read-only by convention) ComfyUI checkouts
    os.environ.setdefault("DEEPYTORCH_CACHE_DIR", os.path.join(os.path.dirname(locate.CACHE), "compile-cache"))
    from devkit import tiny_models
    from devkit.comfy_boot import Comfy
    c = Comfy(path, str(tmp_path_factory.mktemp("comfy")), extra_argv=os.environ.get("COMFYUI_ARGS", "").split(),
              packs=[("deepytorch_testpack", TESTPACK)])
    c.sys_testpack = c.packs["deepytorch_testpack"]
    c.name = name
    c.paths = tiny_models.generate(c.models_dir)
    return c


@pytest.fixture
def run(comfy):
    return comfy.run


@pytest.fixture(scope="session")
def eager_flux(comfy):
    """Eager ComfyUI's image of the default FLUX prompt (harness.workflows.flux_t2i), for the server tests."""
    from harness import workflows as wf
    return comfy.image(comfy.run(wf.flux_t2i(prefix="eager_flux")), "11")


@pytest.fixture
def deepy_log(caplog):
    """The package's log lines (logger 'deepytorch') as text."""
    caplog.set_level(logging.INFO, logger="deepytorch")

    class Log:
        @property
        def text(self):
            return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("deepytorch"))

        def clear(self):
            caplog.clear()
    return Log()


@pytest.fixture(scope="session")
def server(comfy, tmp_path_factory):
    """The real ComfyUI server (same checkout, same tiny models, this package + the test pack in custom_nodes)."""
    from harness.server import ComfyServer
    s = ComfyServer(comfy.comfy_dir, str(tmp_path_factory.mktemp("server")), comfy.models_dir,
                    comfy.custom_nodes_dir)
    s.start()
    yield s
    s.stop()
