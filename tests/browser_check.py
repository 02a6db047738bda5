"""Open a page in headless Chromium and read back, after the load event, how each <img> and <audio> fared.

Chromium's `--dump-dom` prints the DOM once the page has loaded. The page is copied beside itself (same folder,
so the same relative links) with a small inline script that, on `load`, writes one JSON record into the DOM: every
image's natural width and every audio element's duration, ready state and error code. Media elements delay the
load event until their metadata has arrived or failed (HTML spec, "delaying the load event"), so the durations are
known by then. No DevTools client is needed.
"""
from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({src: i.getAttribute("src"), naturalWidth: i.naturalWidth}));
  const audios = [...document.querySelectorAll("audio")].map(a => ({
    src: a.querySelector("source") ? a.querySelector("source").getAttribute("src") : a.getAttribute("src"),
    duration: a.duration, readyState: a.readyState, error: a.error ? a.error.code : null}));
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images, audios});
  document.body.appendChild(out);
});
</script>"""
RESULT = re.compile(r'<pre id="browser-check">(.*?)</pre>', re.S)


def check_page(page: Path, browser: str, profile_dir: Path, timeout_s: int = 120) -> dict:
    """{"images": [{src, naturalWidth}], "audios": [{src, duration, readyState, error}]} of `page` in `browser`.

    readyState >= 1 (HAVE_METADATA) means the duration is known; a <source> that fails to decode leaves its
    <audio> at readyState 0 with a NaN duration (the error goes to the <source>, not to the element)."""
    probe_page = page.with_name(f"{page.stem}.browser-check.html")
    text = page.read_text(encoding="utf-8")
    assert "</body>" in text, f"{page} has no </body>"
    probe_page.write_text(text.replace("</body>", PROBE + "\n</body>", 1), encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
           f"--user-data-dir={profile_dir}", "--dump-dom", probe_page.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    finally:
        probe_page.unlink()
    found = RESULT.search(proc.stdout)
    assert found, f"{browser} wrote no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def media_problems(result: dict, min_seconds: float = 0.0) -> list[str]:
    """What did not work in a `check_page` result: images that did not decode, audio that cannot play (no
    metadata, a media error, or no positive duration; NaN durations arrive as null)."""
    problems = [f"{i['src']}: not decoded" for i in result["images"] if not i["naturalWidth"] > 0]
    for a in result["audios"]:
        if a["error"] is not None or a["readyState"] < 1 or not (a["duration"] or 0) > min_seconds:
            problems.append(f"{a['src']}: cannot play (readyState {a['readyState']}, error {a['error']}, "
                            f"duration {a['duration']})")
    return problems
