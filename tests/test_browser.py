"""The course as a learner meets it: JupyterLab 4 in Debian's Chromium, every notebook run with
Run All, then looked at and touched.

For each notebook (03-06 in order, sharing one work folder, on the tiny base with the small
parameters of tests/test_notebooks.py) it checks what nbclient cannot see: no error or stderr
box, every figure drawn as a picture, every panel drawn as controls (not "Error displaying
widget", "Loading widget..." or a text repr), and one control per panel changing what its label
says. Screenshots of every output land in out/browser/ (PORTRAITKIT_SCREENSHOTS overrides it).

Needs Debian's chromium (/usr/bin/chromium), JupyterLab 4 and Playwright for Python (which
drives that chromium; it never downloads a browser): `.ci/browser` installs them. Skipped
when any of them is missing, so the main suite does not need them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from test_notebooks import NOTEBOOKS, OVERRIDES, with_overrides  # tests/ is on sys.path (pytest's default import mode)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None, reason="JupyterLab is not installed (pip install jupyterlab)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")

REPO = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("PORTRAITKIT_SCREENSHOTS", REPO / "out" / "browser"))
TOKEN = "portraitkit-browser-test"
# Chromium as the machine's notes say it runs headless here: no sandbox as root, no network of its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# JupyterLab's own settings for a test: every cell in the page (its default draws only the cells
# in view), no news or update checks (this machine has no network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
WIDGET_FAILURES = ("Error displaying widget", "Loading widget", "(children=(", "Panel object at 0x", "<Figure size")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port, its kernel this interpreter, the notebooks with their
    small parameters in `root/notebooks`, the shared work folder `root/course`."""
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        with_overrides(notebook, OVERRIDES.get(path.name, {}).get("params", {}))
        nbformat.write(notebook, root / "notebooks" / path.name)
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = jupyter / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (browser test)", "language": "python"}))
    settings = tmp_path_factory.mktemp("lab-settings")
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}  # the inline backend, as in JupyterLab
    env.update(JUPYTER_PATH=str(jupyter), JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"), JUPYTER_CONFIG_DIR=str(jupyter / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(settings / "ws"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    port = _free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--ServerApp.open_browser=False", "--allow-root"],  # CI runs as root
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail("JupyterLab did not start: " + (root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    yield url, root
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, lab):
    """A fresh page per notebook, as a learner opens one; its kernel is shut down afterwards
    (the next notebook reads what this one wrote, not its memory)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    url, _ = lab
    api = context.request
    for kernel in api.get(f"{url}/api/kernels?token={TOKEN}").json():
        api.delete(f"{url}/api/kernels/{kernel['id']}?token={TOKEN}")
    context.close()


def run_all(page, lab, name: str, timeout_s: float):
    """Open `name`, Run All as a learner would (the Run menu), wait until every cell ran."""
    url, _ = lab
    page.goto(f"{url}/lab/tree/notebooks/{name}?reset&token={TOKEN}")  # reset: no tabs restored from before
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    # A fresh JupyterLab asks which kernel to start; the notebook's own (python3) is preselected.
    select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
    try:
        select.wait_for(timeout=10_000)
        select.click()
    except playwright_api.TimeoutError:
        pass
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=60_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile("^Run All Cells")).click()
    code_cells = page.locator(".jp-Notebook .jp-CodeCell")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = code_cells.locator(".jp-InputPrompt").all_inner_texts()
        running = any("*" in p for p in prompts)
        finished = all(re.search(r"\[\d+\]", p) for p in prompts)
        failed = page.locator(".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
        if not running and (finished or failed):
            break
        time.sleep(1)
    else:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name.removesuffix('.ipynb')}_timeout.png"))
        pytest.fail(f"{name} did not finish within {timeout_s:.0f} s; prompts: {prompts}")
    time.sleep(1)  # the last widget views attach


def run_and_check(page, lab, name: str, timeout_s: float) -> dict:
    """Run All of `name`, then `check_outputs`: its counts of pictures and panels."""
    run_all(page, lab, name, timeout_s)
    return check_outputs(page, name)


def html_output(page, text: str):
    """The first HTML widget in the notebook's outputs that shows `text`."""
    return page.locator(".jp-OutputArea-output .widget-html", has_text=text).first


def check_outputs(page, name: str) -> dict:
    """Assert what a learner must never see; return counts of pictures and panels."""
    notebook = page.locator(".jp-Notebook").first
    stderr = notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    assert not stderr, f"{name}: error or stderr boxes: " + " | ".join(text[:300] for text in stderr)
    texts = notebook.locator(".jp-OutputArea-output").all_inner_texts()
    for text in texts:
        for failure in WIDGET_FAILURES:
            assert failure not in text, f"{name}: an output shows {failure!r}: {text[:300]}"
    pictures = notebook.locator(".jp-OutputArea-output img").count()
    panels = notebook.locator(".jp-OutputArea-output .widget-box, .jp-OutputArea-output .jupyter-widgets.widget-inline-hbox").count()
    return {"pictures": pictures, "panels": panels}


def screenshots(page, name: str) -> None:
    """Every output that holds a picture or a panel, one PNG each, for a person to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = name.removesuffix(".ipynb")
    for old in SHOTS.glob(f"{stem}_*.png"):
        old.unlink()
    outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
    for index in range(outputs.count()):
        output = outputs.nth(index)
        if output.locator("img, .widget-box").count():
            output.scroll_into_view_if_needed()
            output.screenshot(path=str(SHOTS / f"{stem}_{index:02d}.png"))


def slider_readout(page, label: str):
    return page.locator(".widget-slider", has=page.locator(".widget-label", has_text=label)).locator(".widget-readout").first


def set_slider(page, label: str, value) -> None:
    """Type a value into a slider's readout and press Enter, as a learner can."""
    readout = slider_readout(page, label)
    readout.scroll_into_view_if_needed()
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def wait_for_text(locator, pattern: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = " ".join(locator.all_inner_texts())
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    pytest.fail(f"never showed {pattern!r}; showed: {text[:500]}")


def exercise_checks_the_prediction(page, name: str) -> None:
    """The learner's side of an exercise: the cell ran with `prediction = None` and printed the
    answer; typing the wrong choice into its first line and running the cell fails it with what
    was measured, the right one says so."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has_text="exercises.check(").first
    outputs = cell.locator(".jp-OutputArea")
    said = re.search(r"The answer: (.+?)\. Set prediction = one of (.+?) before", outputs.inner_text())
    assert said, f"{name}: the exercise did not print its answer: {outputs.inner_text()[:300]}"
    right, choices = said.group(1), re.findall(r"'([^']+)'", said.group(2))
    wrong = next(choice for choice in choices if choice != right)
    for guess, verdict in ((wrong, rf"you predicted '{re.escape(wrong)}'; it measured '{re.escape(right)}'"),
                           (right, rf"Right: {re.escape(right)}")):
        line = cell.locator(".cm-line").first  # `prediction = None  # ...`, the cell's first line
        line.scroll_into_view_if_needed()
        line.click()
        page.keyboard.press("Home")
        page.keyboard.press("Shift+End")
        page.keyboard.type(f'prediction = "{guess}"')
        page.keyboard.press("Shift+Enter")
        wait_for_text(outputs, verdict)


def picture_of(page, has_text: str):
    """The figure picture of the panel whose controls include `has_text`."""
    panel = page.locator(".jp-OutputArea-output", has_text=has_text).first
    return panel.locator("img").last


# --- one test per notebook, in the course's order (03 -> 06 share the work folder) -------------

def test_00_setup(page, lab):
    found = run_and_check(page, lab, "00_setup.ipynb", 120)
    assert found["panels"] >= 1  # the widget check at its end
    screenshots(page, "00_setup.ipynb")


def test_01_lens_panel_redraws(page, lab):
    found = run_and_check(page, lab, "01_lens_distortion.ipynb", 300)
    assert found["pictures"] >= 4 and found["panels"] >= 1
    numbers = html_output(page, "nose width / face width")
    before = picture_of(page, "camera to nose").get_attribute("src")
    set_slider(page, "camera to nose", 150)
    wait_for_text(numbers, r"At 150 cm")
    deadline = time.monotonic() + 30  # the figure is redrawn after the numbers
    while picture_of(page, "camera to nose").get_attribute("src") == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert picture_of(page, "camera to nose").get_attribute("src") != before, "the lens panel's figure was not redrawn"
    screenshots(page, "01_lens_distortion.ipynb")
    exercise_checks_the_prediction(page, "01_lens_distortion.ipynb")


def test_02_processing_panel_flags_what_its_slider_adds(page, lab):
    found = run_and_check(page, lab, "02_light_and_processing.ipynb", 300)
    assert found["pictures"] >= 2 and found["panels"] >= 1
    flags = html_output(page, "After:")
    assert "no problems flagged" in flags.inner_text()
    set_slider(page, "JPEG compression", 1)
    wait_for_text(flags, r"JPEG blocks")
    screenshots(page, "02_light_and_processing.ipynb")
    exercise_checks_the_prediction(page, "02_light_and_processing.ipynb")


def test_03_override_panel_changes_the_count(page, lab):
    found = run_and_check(page, lab, "03_prepare_photos.ipynb", 300)
    assert found["pictures"] >= 2 and found["panels"] >= 1
    status = html_output(page, "will be used for training")
    before = int(re.search(r"(\d+) photos will be used", status.inner_text()).group(1))
    # a handle on that one button: its words change with the click
    toggle = page.locator(".jp-OutputArea-output button.widget-toggle-button", has_text="used for training").first.element_handle()
    toggle.scroll_into_view_if_needed()
    toggle.click()
    wait_for_text(status, rf"{before - 1} photos will be used")
    toggle.click()  # back as prep decided, for the notebooks after this one
    wait_for_text(status, rf"{before} photos will be used")
    screenshots(page, "03_prepare_photos.ipynb")
    exercise_checks_the_prediction(page, "03_prepare_photos.ipynb")


def test_04_train_panel_and_loss_curve(page, lab):
    found = run_and_check(page, lab, "04_train_lora.ipynb", 420)
    # the two teaching figures, the loss curve, validation, the worked example's likeness curve on real photos
    assert found["pictures"] >= 5 and found["panels"] >= 2
    shown = " ".join(" ".join(page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts()).split())  # unwrapped
    assert re.search(r"step 300 \(the person's other shots\): likeness [\d.]+, 8 of 8 judged faces in the band; kept as best/", shown)
    assert "give a training photo back" in shown
    # the panel plans the validation the train cell runs: STEPS 4, VALIDATE_EVERY 2 (tests' parameters) -> steps 2 and 4
    params = OVERRIDES["04_train_lora.ipynb"]["params"]
    validations = len(range(params["VALIDATE_EVERY"], params["STEPS"] + 1, params["VALIDATE_EVERY"]))
    wait_for_text(html_output(page, "estimated"), rf"\({validations} x 8 images\)")
    resume = page.locator(".jp-OutputArea-output .widget-html", has_text="run").filter(has_text=re.compile("holds|new run")).first
    base = page.locator(".jp-OutputArea-output .widget-dropdown", has_text="base model").locator("select").first
    base.scroll_into_view_if_needed()
    label = next(text for text in base.locator("option").all_inner_texts() if text.startswith("tiny-sdxl"))
    base.select_option(label=label)  # the run in the folder was trained on tiny-sd: it must not be offered
    wait_for_text(resume, r"base tiny-sd \(now tiny-sdxl\)")
    screenshots(page, "04_train_lora.ipynb")
    # the learner runs everything again (after a disconnect, say): the finished run is not trained again
    run_all(page, lab, "04_train_lora.ipynb", 420)
    said = page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts()
    assert any(f"already finished {params['STEPS']} steps" in text for text in said), said[-5:]


def test_05_style_panel_counts_the_images(page, lab):
    found = run_and_check(page, lab, "05_styled_portraits.ipynb", 420)
    assert found["pictures"] >= 3 and found["panels"] >= 1  # a grid per style, the dials
    prompt = html_output(page, "sends:")
    count = int(re.search(r"(\d+) images\.", prompt.inner_text()).group(1))
    box = page.locator(".jp-OutputArea-output .widget-checkbox", has_text="corporate").locator("input").first
    box.scroll_into_view_if_needed()
    box.check()
    per_style = int(re.search(r"\d+", slider_readout(page, "per style").inner_text()).group(0))
    wait_for_text(prompt, rf"{count + per_style} images\.")
    screenshots(page, "05_styled_portraits.ipynb")


def test_06_picks_panel_counts_the_ticks(page, lab):
    found = run_and_check(page, lab, "06_final_picks.ipynb", 300)
    assert found["pictures"] >= 2 and found["panels"] >= 1
    status = html_output(page, "picked.")
    wait_for_text(status, r"0 picked\.")
    page.locator(".jp-OutputArea-output .widget-checkbox", has_text="pick").locator("input").first.check()
    wait_for_text(status, r"1 picked\.")
    # on a CPU the judge meets real photos: a copy of a training photo, someone else, a turned head, no face
    real = "\n".join(page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts())
    entries = re.split(r"\n(?=#)", real)  # one per ranked picture, wrapped over lines
    for name, verdict in (("grace_hopper", "copies_training_photo"), ("eileen_collins", "looks like someone else"),
                          ("camera_operator", "turned too far to judge"), ("coffee", "no face found")):
        assert any(name in entry.splitlines()[0] and verdict in entry for entry in entries if entry.strip()), \
            f"06 does not show {name} ranked as {verdict!r}"
    screenshots(page, "06_final_picks.ipynb")
    exercise_checks_the_prediction(page, "06_final_picks.ipynb")
