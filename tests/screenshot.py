"""Retakes outputs/docs/mlflow_compare.png from a real `make run`.

    make run && make ui ARGS="--port 5055" &
    pip install playwright pillow mlflow   # drives the system Chromium: no browser download
    python tests/screenshot.py [outputs/mlflow.db] [5055]
"""

import json
import sys
import urllib.parse
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image
from playwright.sync_api import sync_playwright

store = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/mlflow.db").resolve()
port = sys.argv[2] if len(sys.argv) > 2 else "5055"
client = MlflowClient(f"sqlite:///{store}")
exp = client.get_experiment_by_name("quick")
ids = [r.info.run_id for r in client.search_runs([exp.experiment_id]) if "pfl.sweep_parent" not in r.data.tags]
url = (f"http://127.0.0.1:{port}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
       f"&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}")
shot = Path("/tmp/mlflow_compare_full.png")
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    page.goto(url)
    page.wait_for_timeout(8000)
    try:  # the MLflow Assistant side panel, open on a fresh browser profile
        page.get_by_role("button", name="Close").last.click(timeout=3000)
    except Exception:  # noqa: BLE001 - not shown in this MLflow version
        pass
    page.get_by_text("Clear All").click()
    boxes = page.locator("input[role=combobox]")
    for i, names in ((0, ["strategy.name", "seed"]),
                     (1, ["test.global.f1.mean", "test.personal.f1.mean", "test.personal.acc.mean"])):
        for name in names:
            boxes.nth(i).click()
            boxes.nth(i).fill(name)
            page.wait_for_timeout(400)
            page.keyboard.press("Enter")
            page.wait_for_timeout(400)
        page.keyboard.press("Escape")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shot))
    browser.close()
im = Image.open(shot).convert("RGB").crop((190, 0, 1500, 600))
im = im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS).quantize(colors=64)
im.save(Path(__file__).with_name("mlflow_compare.png"), optimize=True)
