"""The REAL ComfyUI server as a subprocess (`main.py --cpu --listen 127.0.0.1 --port <free>`), with the packs of a
custom_nodes dir (the tests: this package + the test pack, as ComfyUI's own tests/execution do; the cold-start
benchmark: this package + the bench pack), talked to over HTTP. Bounded waits; the server is always stopped."""
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import requests

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_dir, base_dir, models_dir, custom_nodes_dir, extra_args=(), env=None, cpu=True):
        self.comfy_dir = comfy_dir
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_dir = os.path.join(base_dir, "output")
        self.log_path = os.path.join(base_dir, "server.log")
        for d in ("output", "input", "temp", "user"):
            os.makedirs(os.path.join(base_dir, d), exist_ok=True)
        from devkit.comfy_boot import MODEL_FOLDERS
        config = os.path.join(base_dir, "extra_model_paths.yaml")
        with open(config, "w") as f:
            f.write("deepytorch_tests:\n  is_default: true\n")
            for name, sub in MODEL_FOLDERS.items() if models_dir else ():   # None: the caller's yaml maps them
                f.write(f"  {name}: {os.path.join(models_dir, sub)}\n")
            f.write(f"  custom_nodes: {custom_nodes_dir}\n")
        self.cmd = [sys.executable, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
                    "--extra-model-paths-config", config, "--disable-auto-launch",
                    "--output-directory", self.output_dir, "--input-directory", os.path.join(base_dir, "input"),
                    "--temp-directory", os.path.join(base_dir, "temp"),
                    "--user-directory", os.path.join(base_dir, "user"), *extra_args]
        # env: added to this process's environment; a value None removes the variable
        self.env = None if env is None else {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        self.proc = None

    def start(self, timeout=120):
        return self.launch().wait_listening(timeout)

    def launch(self):
        """Start the process without waiting (several instances started at the same moment)."""
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
        return self

    def wait_listening(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/object_info", timeout=5).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI server did not answer within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    # -- HTTP API -----------------------------------------------------------------------------------------------
    def get(self, path, **kw):
        r = requests.get(self.url + path, timeout=30, **kw)
        r.raise_for_status()
        return r

    def object_info(self):
        return self.get("/object_info").json()

    def queue(self, prompt):
        r = requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())}, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"/prompt rejected ({r.status_code}): {r.text}")
        return r.json()["prompt_id"]

    def wait(self, prompt_id, timeout=300):
        """The /history entry once the prompt finished; raises with the server's error if it failed."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                if entry["status"].get("status_str") == "error":
                    raise RuntimeError("prompt failed: " + json.dumps(entry["status"]["messages"])[-3000:])
                return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} not finished within {timeout}s")

    def run(self, prompt, timeout=300):
        return self.wait(self.queue(prompt), timeout)

    def image(self, entry, node):
        """First image of a SaveImage node, fetched through /view, as an int array."""
        import io

        import numpy as np
        from PIL import Image
        img = entry["outputs"][node]["images"][0]
        data = self.get("/view", params={"filename": img["filename"], "subfolder": img["subfolder"],
                                         "type": img["type"]}).content
        return np.asarray(Image.open(io.BytesIO(data))).astype(int)
