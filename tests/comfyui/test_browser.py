"""The user's path in the real ComfyUI web UI, in a real browser: the real server (this package, the tiny models)
serves its real frontend (comfyui-frontend-package) to headless Chromium from the distribution's packages, driven by
Playwright. Search "DeepyTorch" and add a node, open our templates, queue the FLUX one and see its image.

Runs on ComfyUI versions whose frontend lists custom-node templates (current); the Dec-2024 checkouts serve their
bundled legacy frontend and skip. Screenshots of each step go to test-artifacts/browser/ (not committed);
docs/node-search.png in the README is a copy of node-search.png from there.
"""
import os

import pytest
import requests

from devkit import ui_to_api as u
from devkit.comfy_boot import PACKAGE_DIR_NAME
from devkit.locate import REPO_ROOT

CHROMIUM = os.environ.get("DEEPYTORCH_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install -y chromium chromium-driver"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = os.path.join(REPO_ROOT, "test-artifacts", "browser")
EXAMPLES = os.path.join(REPO_ROOT, "example_workflows")
TEMPLATES = ["flux_deepytorch", "flux_lora_deepytorch", "flux_comfy_lora_deepytorch", "sdxl_deepytorch",
             "flux_xlabs_sampler_swap", "flux_controlnet_deepytorch", "sdxl_controlnet_deepytorch"]
DISPLAY_NAMES = {"DeepyTorchApplyDiffusionModel": "Apply DeepyTorch to diffusion model",
                 "DeepyTorchApplyVAE": "Apply DeepyTorch to vae model",
                 "DeepTorchXlabsSampler": "DeepTorch Sampler to replace XlabsSampler",
                 "DeepyTorchApplyControlNet": "Apply DeepyTorch to controlnet",
                 "DeepyTorchStepCache": "Apply DeepyTorch step cache"}
DIFFUSION = "DeepyTorchApplyDiffusionModel"
SEARCH_OPTIONS = ("() => [...document.querySelectorAll('.comfy-vue-node-search-container li[role=option]')]"
                  ".map(li => li.innerText.split('\\n')[0].trim()).filter(Boolean)")
SAVE = 11   # the SaveImage node of the FLUX template


@pytest.fixture(scope="module")
def ui_server(server):
    r = requests.get(server.url + "/workflow_templates", timeout=30)
    if r.status_code == 404:
        pytest.skip("this ComfyUI serves its bundled Dec-2024 frontend (no custom-node templates): the user's path "
                    "in the browser is tested on current ComfyUI")
    # user settings: a new user's first visit opens "Get Started with a Template" over the canvas (this user has
    # seen it); no minimap over the graph, and node text drawn at any zoom (readable screenshots of a whole graph)
    for setting, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False),
                           ("LiteGraph.Canvas.MinFontSizeForLOD", 0)):
        requests.post(f"{server.url}/api/settings/{setting}", json=value, timeout=30).raise_for_status()
    return server


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with `{INSTALL}` (`make test` tries to)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r tests/requirements.txt")
    os.makedirs(SHOTS, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(ui_server, browser):
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080})
    # only the local server: the frontend also calls web services (unreachable here), don't let it wait on them
    local = (ui_server.url, "data:", "blob:")
    ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(local) else route.abort())
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    # the page's own errors, kept beside the screenshots (the frontend reports some for the blocked web services)
    console = open(os.path.join(SHOTS, "console.txt"), "a")
    pg.on("console", lambda m: console.write(f"{m.type}: {m.text}\n") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: console.write(f"pageerror: {e}\n"))
    try:
        pg.goto(ui_server.url)
        pg.wait_for_function("() => window.app?.graph && window.app.canvas && document.querySelector('#graph-canvas')",
                             timeout=60_000)
        yield pg
    finally:
        ctx.close()
        console.close()


def menu(page, item):
    """The main menu (the ComfyUI logo, top left) -> item."""
    page.locator(".comfyui-logo").first.click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def hover(page, graph_xy):
    """Move the mouse to a point of the graph (canvas coordinates) and return the tooltip the UI shows there."""
    x, y = page.evaluate("""(p) => { const [cx, cy] = app.canvas.ds.convertOffsetToCanvas(p);
        const r = app.canvas.canvas.getBoundingClientRect(); return [r.left + cx, r.top + cy]; }""", graph_xy)
    page.mouse.move(x - 40, y - 40)
    page.mouse.move(x, y, steps=8)        # the canvas tracks the pointer as it moves
    tip = page.locator(".node-tooltip")
    tip.wait_for(timeout=5_000)           # shown after the tooltip delay (500 ms)
    return tip.inner_text()


def shot(page, name, **kw):
    page.screenshot(path=os.path.join(SHOTS, name), **kw)


def test_search_deepytorch_lists_our_nodes_and_adds_one(page, ui_server):
    menu(page, "New")                                   # a blank workflow
    assert page.evaluate("app.graph.nodes.length") == 0
    box = page.locator("#graph-canvas").bounding_box()
    search = page.locator(".comfy-vue-node-search-container input")
    page.wait_for_timeout(300)    # the new tab's canvas may miss a double-click while it is being set up
    for attempt in range(3):      # so a user double-clicks again
        page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        try:
            search.wait_for(timeout=3_000)
            break
        except Exception:
            if attempt == 2:
                shot(page, "01-node-search-did-not-open.png")
                raise
    page.keyboard.type("DeepyTorch")
    page.wait_for_function(f"(names) => names.every(n => ({SEARCH_OPTIONS})().includes(n))",
                           arg=list(DISPLAY_NAMES.values()), timeout=15_000)
    page.wait_for_timeout(500)            # the list as it settles for the whole query
    top = page.evaluate(SEARCH_OPTIONS)[:len(DISPLAY_NAMES)]
    assert sorted(top) == sorted(DISPLAY_NAMES.values())   # the pack's nodes come first
    shot(page, "01-node-search-full.png")
    # the README's picture: the search box, its results and the node preview
    parts = [page.locator(s).bounding_box() for s in (".comfy-vue-node-search-container input",
                                                      ".comfy-vue-node-search-container ul.p-autocomplete-list",
                                                      "._sb_node_preview")]
    x0, y0 = min(b["x"] for b in parts) - 16, min(b["y"] for b in parts) - 16
    x1, y1 = max(b["x"] + b["width"] for b in parts) + 16, max(b["y"] + b["height"] for b in parts) + 16
    shot(page, "node-search.png", clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})

    page.locator("li[role=option]", has_text=DISPLAY_NAMES[DIFFUSION]).click()
    page.wait_for_function("app.graph.nodes.length === 1")
    node = page.evaluate("""() => { const n = app.graph.nodes[0]; return {type: n.type, title: n.title,
        pos: [...n.pos], outputs: n.outputs.map(o => [o.name, o.type]),
        inputs: n.inputs.filter(i => !i.widget).map(i => [i.name, i.type]),
        widgets: (n.widgets || []).map(w => [w.name, w.value, w.y])}; }""")
    info = ui_server.object_info()[DIFFUSION]
    required = info["input"]["required"]
    assert (node["type"], node["title"]) == (DIFFUSION, DISPLAY_NAMES[DIFFUSION])
    assert node["inputs"] == [["model", "MODEL"]] and node["outputs"] == [["MODEL", "MODEL"]]
    assert [(name, value) for name, value, _ in node["widgets"]] == [
        ("backend", "auto"), ("mode", "default"), ("dynamic", "auto"), ("scope", "regional"), ("fullgraph", False),
        ("attention", "auto")]
    assert [w[0] for w in node["widgets"]] == [w[0] for w in u.widget_inputs(info)]
    # tooltips: a widget's and the input slot's, as the server defines them
    scope_y = next(y for name, _, y in node["widgets"] if name == "scope")
    x, y = node["pos"]
    assert hover(page, [x + 60, y + scope_y + 10]) == required["scope"][1]["tooltip"]
    model_slot = page.evaluate("() => [...app.graph.nodes[0].getConnectionPos(true, 0)]")
    assert hover(page, model_slot) == required["model"][1]["tooltip"]
    shot(page, "02-node-added-with-tooltip.png")


def test_flux_template_from_the_browser_runs(page, ui_server):
    menu(page, "Browse Templates")
    # our category, under "Custom Nodes"; on a loaded machine the dialog may still be filling in when clicked
    for attempt in range(3):
        page.get_by_text(PACKAGE_DIR_NAME, exact=True).click()
        try:
            page.get_by_text(TEMPLATES[0], exact=True).first.wait_for(timeout=15_000)
            break
        except Exception:
            shot(page, f"03-templates-attempt{attempt + 1}.png")
            if attempt == 2:
                raise
    for name in TEMPLATES:
        page.get_by_text(name, exact=True).first.wait_for()
    shot(page, "03-templates.png")
    page.get_by_text("flux_deepytorch", exact=True).first.click()
    page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'SaveImage') "
                           "&& !document.querySelector('[role=dialog]')")
    ui = u.load(os.path.join(EXAMPLES, "flux_deepytorch.json"))
    assert sorted(page.evaluate("app.graph.nodes.map(n => n.type)")) == sorted(n["type"] for n in ui["nodes"])
    # the frontend's own UI -> API conversion equals devkit's (dev/devkit/ui_to_api.py)
    frontend = page.evaluate("async () => (await app.graphToPrompt()).output")
    ours = u.convert(ui, ui_server.object_info())
    assert {k: (v["class_type"], v["inputs"]) for k, v in frontend.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in ours.items()}

    # small for CPU: size and steps typed into the widgets, as a user would (everything else as shipped)
    page.evaluate("""() => { for (const [type, name, v] of [['EmptySD3LatentImage', 'width', 64],
            ['EmptySD3LatentImage', 'height', 64], ['KSampler', 'steps', 2]]) {
        const n = app.graph.nodes.find(n => n.type === type); const w = n.widgets.find(w => w.name === name);
        w.value = v; w.callback?.(v); }
        app.graph.setDirtyCanvas(true, true); }""")
    page.get_by_role("button", name="Fit View (.)").click()   # the Save Image node (and its preview) in sight
    shot(page, "04-flux-template-loaded.png")
    before = set(requests.get(ui_server.url + "/history", timeout=30).json())
    page.get_by_role("button", name="Run", exact=True).click()
    # the image appears in the Save Image node (compile included: inductor on CPU; from an empty inductor cache on
    # 2 cores shared by the four test processes of `make test` it took over 180 s once)
    page.wait_for_function(f"""() => {{ const img = app.graph.getNodeById({SAVE}).imgs?.[0];
        return img && img.complete && img.naturalWidth > 0; }}""", timeout=600_000)
    shown = page.evaluate(f"""() => {{ const img = app.graph.getNodeById({SAVE}).imgs[0];
        return [img.naturalWidth, img.naturalHeight, new URL(img.src).searchParams.get('filename')]; }}""")
    shot(page, "05-flux-image.png")
    assert shown[:2] == [64, 64]
    history = requests.get(ui_server.url + "/history", timeout=30).json()
    new = [history[k] for k in set(history) - before]
    assert len(new) == 1 and new[0]["status"]["status_str"] == "success" and new[0]["status"]["completed"]
    assert new[0]["outputs"][str(SAVE)]["images"][0]["filename"] == shown[2]
    prompt = new[0]["prompt"][2]    # what the UI queued: the template with the sizes set above
    assert prompt["7"]["inputs"]["width"] == 64 and prompt["9"]["inputs"]["steps"] == 2
    assert prompt["21"]["class_type"] == DIFFUSION and prompt["9"]["inputs"]["model"] == ["21", 0]
