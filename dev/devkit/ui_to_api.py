"""UI-format workflow -> API prompt: the pack's own converter (instance/ui_to_api.py, also used by the start-up
warm-up), loaded by file so devkit never imports the node pack."""
import importlib.util
import os
import sys

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "instance",
                     "ui_to_api.py")
_spec = importlib.util.spec_from_file_location("devkit._ui_to_api", _PATH)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
sys.modules[__name__] = _module
