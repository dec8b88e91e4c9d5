"""The HTML report in a real browser: headless Chromium, driven over the DevTools protocol.

Every page of a small report is opened from disk; the test fails on any console error or
uncaught exception, any failed or non-local request, any image that did not decode, any link
to a file or anchor that does not exist, a blank page (a uniform screenshot), or a comparison
table that the page's own script does not sort. Chromium is Debian's ``chromium`` package; CI
(``.ci/run``) installs it, and without it this test fails and says how to install it.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from tests.test_report import HOSTILE, make_results

# Flags for a closed network: without the background-networking ones Chromium keeps dialling out.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--window-size=1280,1600", "--remote-debugging-pipe",
)
TIMEOUT_S = 60


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed, and the report's browser test needs it: run `apt-get install -y "
                "chromium` (Debian's package; .ci/run installs it before the tests)", pytrace=False)


class DevTools:
    """A minimal DevTools-protocol client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # bash puts our pipe ends on the descriptors Chromium expects, then becomes Chromium (dash
        # would do, but takes only one-digit descriptors).
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c", script, binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str, *, session: str):
        """The value of a JavaScript expression in the page; a thrown exception raises."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression[:60]}...: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, method: str, *, session: str, since: int) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for e in self.events[since:]:
                if e.get("method") == method and e.get("sessionId") == session:
                    return e
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)
        self._log.close()


PAGE_FACTS = """(() => ({
  title: document.title,
  text: document.body ? document.body.innerText.length : 0,
  images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  injected: document.querySelectorAll('img[src="x"]').length,
}))()"""

# Click the balanced-accuracy header twice: ascending, then descending, by the cells' data-v.
SORT_CHECK = """(() => {
  const t = Array.from(document.querySelectorAll('table.sortable')).find(
    t => Array.from(t.tHead.rows[0].cells).some(h => h.textContent.startsWith('balanced acc')));
  if (!t) return null;
  const heads = Array.from(t.tHead.rows[0].cells);
  const col = heads.findIndex(h => h.textContent.startsWith('balanced acc'));
  const values = () => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[col].getAttribute('data-v')));
  heads[col].click(); const up = values();
  heads[col].click(); const down = values();
  return {col, up, down};
})()"""


def _problems(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            out.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
        elif m == "Network.requestWillBeSent" and urlsplit(p["request"]["url"]).scheme not in ("file", "data"):
            out.append(f"non-local request: {p['request']['url']}")
        elif m == "Page.javascriptDialogOpening":
            out.append(f"a dialog opened: {p.get('message')}")
    return out


def check_site(index: Path, *, screenshots: Path, profile: Path) -> dict[str, dict]:
    """Open every page reachable from ``index`` in headless Chromium; return the facts per page.

    Raises AssertionError naming each problem. Screenshots (the first 1280 x 1600 pixels of each
    page) are written to ``screenshots``.
    """
    screenshots.mkdir(parents=True, exist_ok=True)
    site = index.parent.resolve()
    browser = DevTools(chromium_binary(), profile, screenshots / "chromium.log")
    facts: dict[str, dict] = {}
    problems: list[str] = []
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        queue = [index.resolve()]
        while queue:
            page = queue.pop(0)
            if page.name in facts:
                continue
            since = len(browser.events)
            nav = browser.call("Page.navigate", {"url": page.as_uri()}, session=session)
            assert "errorText" not in nav, f"{page.name}: {nav}"
            browser.wait_for("Page.loadEventFired", session=session, since=since)
            got = browser.evaluate(PAGE_FACTS, session=session)
            got["sort"] = browser.evaluate(SORT_CHECK, session=session)
            shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
            (screenshots / f"{page.stem}.png").write_bytes(base64.b64decode(shot))
            got["screenshot"] = screenshots / f"{page.stem}.png"
            browser.evaluate("0", session=session)  # a round trip, so that events of the page are in
            problems += [f"{page.name}: {p}" for p in _problems(browser.events[since:])]
            facts[page.name] = got
            for img in got["images"]:
                if not img["ok"]:
                    problems.append(f"{page.name}: image did not load: {img['src']}")
            for link in got["links"]:
                u = urlsplit(link)
                if u.scheme != "file":
                    problems.append(f"{page.name}: link leaves the disk: {link}")
                    continue
                target_path = Path(unquote(u.path))
                if not target_path.exists():
                    problems.append(f"{page.name}: broken link {link}")
                elif target_path.suffix == ".html" and site in target_path.resolve().parents:
                    queue.append(target_path.resolve())
                if u.fragment and target_path.resolve() == page and u.fragment not in got["ids"]:
                    problems.append(f"{page.name}: anchor #{u.fragment} does not exist")
    finally:
        browser.close()
    assert not problems, "\n".join(problems)
    return facts


def _is_blank(png: Path) -> bool:
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("L"), dtype=np.float32)
    return float(a.std()) < 2.0 or float((np.abs(a - np.median(a)) > 30).mean()) < 0.01


def test_every_report_page_loads_clean_in_chromium(tmp_path):
    from probes.report import build_report

    made = make_results(tmp_path / "made")
    site = build_report(made["results"], store=made["store"])
    facts = check_site(site.index, screenshots=tmp_path / "shots", profile=tmp_path / "profile")

    assert set(facts) == {"index.html", *(p.path.name for p in site.pages)}  # every page reached by links
    for name, f in facts.items():
        assert f["text"] > 500, f"{name} shows almost no text"
        assert not _is_blank(f["screenshot"]), f"{name} renders blank"
        assert f["injected"] == 0, f"{name}: a name became markup"
    index = facts["index.html"]
    assert index["title"] == "Track 3 report" and any(i["src"].endswith("figures/accuracy.png") for i in index["images"])
    sort = index["sort"]
    assert sort is not None and len(sort["up"]) == 2
    assert sort["up"] == sorted(sort["up"]) and sort["down"] == sorted(sort["down"], reverse=True)
    planted = facts["track3_planted_all.html"]
    thumbs = [i for i in planted["images"] if "/thumbs/" in i["src"]]
    assert thumbs and all(i["ok"] for i in thumbs)  # faces decoded by the browser, not just written
    assert HOSTILE not in (site.index.parent / "track3_planted_all.html").read_text(encoding="utf-8")


def test_chromium_check_catches_a_broken_page(tmp_path):
    """The checker itself fails on a missing image, a dead link and a script error (it can fail)."""
    page = tmp_path / "site" / "index.html"
    page.parent.mkdir()
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
                    + "<p>text</p>" * 200 + '<img src="missing.png"><a href="gone.html">x</a>'
                    "<script>undefinedFunction()</script></body></html>", encoding="utf-8")
    with pytest.raises(AssertionError) as err:
        check_site(page, screenshots=tmp_path / "shots", profile=tmp_path / "profile")
    text = str(err.value)
    assert "missing.png" in text and "broken link" in text and "undefinedFunction" in text


def test_without_chromium_the_test_fails_and_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_binary()
