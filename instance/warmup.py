"""Start-up warm-up: `DEEPYTORCH_WARMUP=<file>[:<file>...]` names workflows (API format, or UI format converted with
the running server's /object_info) that the server runs once, right after it starts listening, through its own HTTP
API and prompt queue (the path a real request takes), so the first real request finds the models loaded and the
regions compiled (for the graphs and sizes in those files).

- SaveImage nodes become PreviewImage (ComfyUI's temp folder): the warm-up's images are not kept in the output
  folder. The prompt shows in /queue while it runs (client id "deepytorch-warmup") and is deleted from /history
  once it finished.
- A bad warm-up (missing file, invalid JSON, a prompt the server rejects, a node error, a timeout:
  DEEPYTORCH_WARMUP_TIMEOUT seconds, default 1800) is logged with the reason and marked failed; the server keeps
  serving and the status route reports ready, so a platform's health check never restarts the instance for it.
"""
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request

from . import ui_to_api

log = logging.getLogger("deepytorch")
ENV = "DEEPYTORCH_WARMUP"
TIMEOUT_ENV = "DEEPYTORCH_WARMUP_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0
CLIENT_ID = "deepytorch-warmup"
SERVER_WAIT_S = 600.0          # for the server to start listening after the custom nodes loaded

_lock = threading.Lock()
_state = {"state": "none", "files": [], "seconds": None, "error": None}
_thread = []


def state():
    with _lock:
        return dict(_state, files=list(_state["files"]))


def _set(**values):
    with _lock:
        _state.update(values)


def _timeout():
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        log.warning("DeepyTorch: %s=%r is not a number of seconds; using %d", TIMEOUT_ENV, raw, DEFAULT_TIMEOUT)
        return DEFAULT_TIMEOUT


def start():
    """Start the warm-up thread if DEEPYTORCH_WARMUP names workflows (once per process)."""
    spec = os.environ.get(ENV, "").strip()
    if not spec or _thread:
        return False
    files = [f.strip() for f in spec.split(os.pathsep) if f.strip()]
    _set(state="running", files=files)
    log.info("DeepyTorch: warm-up: %s will run once the server listens (status: 503 until it has finished)",
             ", ".join(files))
    thread = threading.Thread(target=_run, args=(files, _timeout()), name="deepytorch-warmup", daemon=True)
    _thread.append(thread)
    thread.start()
    return True


def base_url():
    """This server's own address, from ComfyUI's command line (--listen, --port, --tls-keyfile)."""
    from comfy.cli_args import args
    listen = (getattr(args, "listen", None) or "127.0.0.1").split(",")[0].strip()
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(listen, listen)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if getattr(args, "tls_keyfile", None) else "http"
    return f"{scheme}://{host}:{args.port}"


def _request(method, url, body=None, timeout=30):
    """(HTTP status, decoded JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    # our own server: its TLS certificate is the user's (often self-signed) and the host is this machine
    context = ssl._create_unverified_context() if url.startswith("https") else None  # noqa: S323
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:  # noqa: S310 (own server)
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")[:500]


class WarmupError(Exception):
    pass


def load(path, object_info=None):
    """The API prompt in `path` (UI format converted with `object_info()`, a callable, when given one)."""
    if not os.path.isfile(path):
        raise WarmupError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise WarmupError(f"{path}: not a JSON workflow ({type(e).__name__}: {e})") from e
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):   # UI format (ComfyUI's "Save")
        if object_info is None:
            raise WarmupError(f"{path}: a UI-format workflow needs the server's node definitions")
        try:
            data = ui_to_api.convert(data, object_info())
        except (KeyError, ValueError, TypeError) as e:
            raise WarmupError(f"{path}: cannot convert the UI-format workflow ({type(e).__name__}: {e})") from e
    elif isinstance(data, dict) and isinstance(data.get("prompt"), dict):   # the body of a POST /prompt
        data = data["prompt"]
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise WarmupError(f"{path}: not an API-format workflow ({{node id: {{class_type, inputs}}}})")
    return without_saved_images(data)


def without_saved_images(prompt):
    """SaveImage -> PreviewImage (ComfyUI's temp folder), so the warm-up leaves nothing in the output folder."""
    out = {}
    for node_id, node in prompt.items():
        node = dict(node)
        if node.get("class_type") == "SaveImage":
            node = {"class_type": "PreviewImage", "inputs": {"images": node.get("inputs", {}).get("images")},
                    "_meta": node.get("_meta", {})}
        elif str(node.get("class_type", "")).startswith("Save"):
            log.info("DeepyTorch: warm-up: node %s (%s) still writes to the output folder", node_id,
                     node["class_type"])
        out[node_id] = node
    return out


def _rejection(payload):
    """The reason in a /prompt 400 answer: its error and each node's errors."""
    if not isinstance(payload, dict):
        return str(payload)
    error = payload.get("error")
    parts = [error.get("message", str(error)) if isinstance(error, dict) else str(error)]
    for node_id, entry in (payload.get("node_errors") or {}).items():
        for e in entry.get("errors", []):
            parts.append(f"node {node_id} ({entry.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(p for p in parts if p)


def _execution_error(entry):
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: " \
                   f"{data.get('exception_message', '').strip()}"
        if kind == "execution_interrupted":
            return "interrupted"
    return "the prompt failed"


def _wait_for_server(url, deadline):
    while time.time() < deadline:
        try:
            _request("GET", url + "/deepytorch/status", timeout=5)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise WarmupError(f"the server did not answer at {url} within {SERVER_WAIT_S:.0f} s")


def run_prompt(url, prompt, deadline):
    status, payload = _request("POST", url + "/prompt", {"prompt": prompt, "client_id": CLIENT_ID})
    if status != 200 or not isinstance(payload, dict) or "prompt_id" not in payload:
        raise WarmupError(f"the server rejected the prompt (HTTP {status}): {_rejection(payload)}")
    prompt_id = payload["prompt_id"]
    try:
        while time.time() < deadline:
            _, history = _request("GET", f"{url}/history/{prompt_id}")
            entry = (history or {}).get(prompt_id) if isinstance(history, dict) else None
            result = (entry or {}).get("status", {})
            if result.get("status_str") == "error":
                raise WarmupError(_execution_error(entry))
            if result.get("completed"):
                return
            time.sleep(0.25)
        raise WarmupError(f"not finished within {TIMEOUT_ENV}={_timeout():.0f} s")
    finally:
        try:
            _request("POST", url + "/history", {"delete": [prompt_id]})
        except (urllib.error.URLError, OSError):
            pass


def _run(files, timeout):
    t0 = time.time()
    current = files[0]
    try:
        url = base_url()
        _wait_for_server(url, t0 + SERVER_WAIT_S)
        t0 = time.time()
        deadline = t0 + timeout

        def object_info():
            status, info = _request("GET", url + "/object_info", timeout=120)
            if status != 200 or not isinstance(info, dict):
                raise WarmupError(f"/object_info answered HTTP {status}")
            return info

        for current in files:
            start = time.time()
            run_prompt(url, load(current, object_info), deadline)
            log.info("DeepyTorch: warm-up: %s done in %.1f s", current, time.time() - start)
    except Exception as e:   # a bad warm-up must never stop the server: report it, stay serving
        reason = str(e) if isinstance(e, WarmupError) else f"{type(e).__name__}: {e}"
        if not reason.startswith(current):
            reason = f"{current}: {reason}"
        _set(state="failed", seconds=round(time.time() - t0, 3), error=reason)
        log.error("DeepyTorch: warm-up failed: %s. The server keeps serving; status reports ready with the error",
                  reason)
        return
    _set(state="done", seconds=round(time.time() - t0, 3))
    log.info("DeepyTorch: warm-up finished in %.1f s: ready", time.time() - t0)
