"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), for tests that must see a page as a browser does.

`find_chromium()` finds Debian's `chromium` (installed by `make install`); `open_page(path)` loads a local file in a fresh headless browser (its own profile folder, no network
needed), collects every console error, uncaught exception and browser log error while it loads, evaluates a
script in the page, and takes a full-page screenshot.  The DevTools endpoint listens on loopback only; the
client is `websockets`' synchronous one.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from short_tmp import short_temp_dir

START_TIMEOUT_S = 90
LOAD_TIMEOUT_S = 120


def find_chromium() -> str:
    """The chromium binary (`make install` installs Debian's `chromium` with the system packages)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("no chromium on PATH: `make install` installs it (apt-get install chromium)")
    return found


@dataclass
class PageResult:
    value: Any  # what the evaluated script returned
    console_errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""  # PNG


class _Cdp:
    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=START_TIMEOUT_S)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = LOAD_TIMEOUT_S, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, name: str, timeout: float = LOAD_TIMEOUT_S) -> dict[str, Any]:
        for e in self.events:
            if e["method"] == name:
                return e
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == name:
                    return msg

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('text', '')} {d.get('exception', {}).get('description', '')}")
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text', '')} {p['entry'].get('url', '')}")
        return out


def open_page(binary: str, page: Path, script: str, width: int = 1200, max_height: int = 16000) -> PageResult:
    """Load `page` headless, evaluate `script` (an expression; may return a promise) and screenshot the page."""
    with short_temp_dir("unish-chromium-") as profile:
        args = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-sync", "--hide-scrollbars",
                "--mute-audio", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        log = open(Path(profile) / "stderr.log", "wb")
        # its sockets go under TMPDIR: a short one (see short_tmp)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "TMPDIR": str(profile)})
        try:
            port = _devtools_port(Path(profile), proc)
            loopback = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
            with loopback.open(f"http://127.0.0.1:{port}/json/list", timeout=START_TIMEOUT_S) as r:
                targets = json.loads(r.read())
            target = next(t for t in targets if t.get("type") == "page")
            cdp = _Cdp(target["webSocketDebuggerUrl"])
            try:
                for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                    cdp.call(domain)
                cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                         mobile=False)
                cdp.call("Page.navigate", url=page.resolve().as_uri())
                cdp.wait_event("Page.loadEventFired")
                got = cdp.call("Runtime.evaluate", expression=script, returnByValue=True, awaitPromise=True)
                if "exceptionDetails" in got:
                    raise RuntimeError(f"the check script failed: {got['exceptionDetails']}")
                height = int(cdp.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                                      returnByValue=True)["result"]["value"])
                shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                clip={"x": 0, "y": 0, "width": width, "height": min(height, max_height), "scale": 1})
                return PageResult(got["result"].get("value"), cdp.errors(), base64.b64decode(shot["data"]))
            finally:
                try:
                    cdp.call("Browser.close", timeout=10)
                except Exception:  # the browser may close the socket before it answers
                    pass
                cdp.ws.close()
        finally:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
            log.close()


def _devtools_port(profile: Path, proc: subprocess.Popen) -> int:
    """Chromium writes the port it chose into <profile>/DevToolsActivePort once it listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited ({proc.returncode}): "
                               f"{(profile / 'stderr.log').read_text(errors='replace')[-2000:]}")
        if marker.is_file():
            lines = marker.read_text().splitlines()
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not open its DevTools port in {START_TIMEOUT_S} s")
