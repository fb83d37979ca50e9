"""Notebook 01's Head Fusion widget in JupyterLab in a real browser (Debian's chromium + chromium-driver, Selenium).

JupyterLab serves a copy of the notebook from a temporary folder (its autosave never touches notebooks/); the test
runs every cell on the synthetic corpus (quick profile, fresh results folder), moves the n_head slider one step,
presses Train and waits for the output area to show that run's result. On failure a screenshot goes to
``build/browser/``; on success ``build/browser/widget_after_train.png`` (the copy committed as
``docs/widget_after_train.png``). Skipped, with the reason, where the browser, its driver, Selenium or JupyterLab
is missing; nothing is downloaded (Selenium Manager is bypassed by the explicit driver path).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO / "build" / "browser"
NOTEBOOK = "01_head_fusion.ipynb"
RUN_ALL_TIMEOUT_S = 420

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} not found (apt-get install -y chromium chromium-driver)"
    for mod, pkg in (("selenium", "selenium"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(mod) is None:
            return f"python package {pkg} not installed (pip install -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, fn, timeout: float, every: float = 0.5):
    """Poll ``fn`` until it returns something truthy; a DOM node replaced under us (JupyterLab re-renders output areas
    while a handler streams into them) counts as "not yet", not as a failure."""
    try:
        from selenium.common.exceptions import StaleElementReferenceException as stale
    except ImportError:  # only the server fixture uses _wait before Selenium is known to be there
        stale = ()
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            value = fn()
        except stale as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last try: {type(last).__name__})" if last else ""))


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free localhost port with a token, serving a copy of notebook 01."""
    reason = _missing()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "SERLIB_RESULTS": str(tmp_path / "results"), "SERLIB_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "PYTHONPATH": os.pathsep.join(
               [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         "--LabApp.news_url=None"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                assert proc.poll() is None, f"jupyter lab exited: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}"
                return False
        _wait("jupyter lab to listen", up, 90)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}", tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


# the notebook panel of JupyterLab (exposed by --LabApp.expose_app_in_browser)
_PANEL = "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
_KERNEL_STATUS = _PANEL + """
return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
    ? w.sessionContext.session.kernel.status : null;"""
_CELLS = _PANEL + """
if (!w || !w.content) return null;
return w.content.widgets.filter(c => c.model.type === 'code').map(c => ({
    count: c.model.executionCount,
    errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)}));"""


def _output_text(driver, slider) -> str:
    """The text of every output area inside the slider's widget box, read in one script call (atomic against
    re-renders; reading element by element raced with JupyterLab replacing the nodes, a flaky CI failure)."""
    return driver.execute_script("""
        const box = arguments[0].closest('.widget-vbox');
        return box ? Array.from(box.querySelectorAll('.jp-OutputArea-output')).map(e => e.innerText).join('\\n') : '';
        """, slider) or ""


@pytest.mark.slow
def test_widget_trains_with_the_moved_slider_in_jupyterlab(lab, browser, request):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, tmp_path = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = browser
    try:
        driver.get(url)
        _wait("the notebook's kernel", lambda: driver.execute_script(_KERNEL_STATUS) == "idle", 120)
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

        def finished():
            cells = driver.execute_script(_CELLS) or []
            errors = [e for c in cells for e in c["errors"]]
            assert not errors, f"a cell raised: {errors}"
            return cells and all(c["count"] for c in cells) and driver.execute_script(_KERNEL_STATUS) == "idle"
        _wait("every cell of notebook 01 to run", finished, RUN_ALL_TIMEOUT_S, every=2)

        sliders = _wait("the n_head slider", lambda: [
            s for s in driver.find_elements(By.CSS_SELECTOR, ".widget-slider")
            if s.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == "n_head"], 60)
        slider = sliders[-1]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
        readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
        before = int(readout.text)
        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        handle.click()
        handle.send_keys(Keys.ARROW_RIGHT)
        _wait("the slider to move", lambda: readout.text.strip() == str(before + 1), 10)

        button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button.jupyter-button")
                      if b.text.strip() == "Train")
        button.click()
        expected = f"n_head={before + 1} "

        def shown():
            text = _output_text(driver, slider)
            return text if expected in text and "UA " in text else None
        text = _wait(f"the output area to show the run with {expected!r}", shown, 240)
        assert "% (test, last epoch)" in text
        # the handler appends the confusion matrix, then the attention maps, then the kernel goes idle
        _wait("the run's two figures", lambda: len(slider.find_elements(
            By.XPATH, "ancestor::div[contains(@class, 'widget-vbox')][1]//img")) == 2, 120)
        _wait("the kernel to finish the Train handler", lambda: driver.execute_script(_KERNEL_STATUS) == "idle", 60)
        for no in driver.find_elements(By.XPATH, "//button[normalize-space()='No']"):  # the news prompt, if shown
            no.click()
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", slider)
        time.sleep(1)
        driver.save_screenshot(str(SHOTS / "widget_after_train.png"))
    except BaseException:
        driver.save_screenshot(str(SHOTS / f"failure_{request.node.name}.png"))
        log = tmp_path / "jupyterlab.log"
        if log.exists():
            shutil.copy(log, SHOTS / "jupyterlab.log")
        raise
