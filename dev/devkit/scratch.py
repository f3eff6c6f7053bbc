"""Temporary folders of one benchmark / demo process (a ComfyUI base folder, a throw-away cache), removed when the
process exits: runs leave nothing behind in the temp folder."""
import atexit
import shutil
import tempfile


def scratch_dir(prefix):
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
