"""report.html opened from disk in headless Chromium, offline: every image loads, nothing reaches the
console, and a screenshot is taken (kept where REPORT_SCREENSHOT points, to look at)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from seed_sweep import paired_sweep

from tools import report

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium); "
                                "the page is still checked by tests/test_report_html.py")

# Only for this test: after the load event, list the images that did not decode (and record failed
# loads, which fire 'error' events that a capturing listener sees) in an element --dump-dom prints.
CHECK = """<script>
const failed = [];
window.addEventListener('error', e => failed.push(e.target && e.target.src || String(e.message)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = 'IMAGES ' + imgs.length + ' BROKEN ' + JSON.stringify(bad.concat(failed));
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             # offline: any host name fails to resolve, so a page that needed the network would show it
             "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
    r = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # The page has no script, so any console line is the browser's complaint about it.
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Failed to load resource" in line]
    assert not console, console
    return r


def test_page_loads_every_image_offline_and_renders(tmp_path, capsys):
    root = paired_sweep(tmp_path / "runs")
    assert report.main([str(root)]) == 0
    page = root / "report.html"
    probe = root / "report_check.html"  # beside the page, so relative image paths resolve alike
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")

    dom = chromium(tmp_path, "--dump-dom", probe.as_uri()).stdout
    m = re.search(r'<pre id="img-check">IMAGES (\d+) BROKEN (.*?)</pre>', dom)
    assert m, "the page never finished loading: " + dom[-500:]
    n_imgs = page.read_text(encoding="utf-8").count("<img ")
    assert int(m.group(1)) == n_imgs > 0 and m.group(2) == "[]", m.group(0)

    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        # a rendered page, not a blank one: several distinct shades across the image
        assert max(ImageStat.Stat(im.convert("L")).stddev) > 20
    keep = os.environ.get("REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
