"""Open a page in headless Chromium: a screenshot, the console's errors and every URL it requested.

This is how the report is checked in a real browser (tests) and how the README's picture is
made (`scripts/screenshot_report.py`). It talks the DevTools protocol over a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on file descriptors 3 and 4), so it
needs nothing but Chromium itself, and it sees what a console shows: `console.error`,
uncaught exceptions and failed loads, which a log file mixes with ordinary messages.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageVisit:
    screenshot: bytes = b""
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and error-level log entries (failed loads)."""
    requests: list[str] = field(default_factory=list)
    """Every URL the page asked for (the page itself, data: URIs included)."""
    values: list[Any] = field(default_factory=list)
    """What each expression given to `visit(evaluate=...)` returned, in order."""


class Browser:
    """One headless Chromium with a fresh profile, driven over the DevTools pipe."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="dqar-chromium-")
        self._log = tempfile.TemporaryFile()  # Chromium's own messages, quoted if it goes away
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: it reads commands on fd 3 and writes replies on fd 4
            read, write = os.dup(to_browser_r), os.dup(from_browser_w)  # out of the way of 3 and 4
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._process = subprocess.Popen(  # close_fds would close 3 and 4 after `wire`; ours are not inheritable
            [self.executable, *FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            close_fds=False, preexec_fn=wire,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - closing a browser that already went away
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self._profile.cleanup()

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"Chromium went away before {method}; it said: {self.said()}") from None
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def said(self, limit: int = 600) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:].strip() or "(nothing)"

    def _read(self, deadline: float | None = None) -> dict[str, Any]:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed its DevTools pipe; it said: {self.said()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages, lazy loads)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self._events.append(self._read(end))
            except TimeoutError:
                break

    def visit(
        self, url: str, width: int = 1280, height: int = 900, full_page: bool = False, settle: float = 0.5, evaluate: Sequence[str] = ()
    ) -> PageVisit:
        """Load `url`, wait for its load event, run `evaluate` (JavaScript expressions) in the page,
        and take a screenshot (of the viewport or the whole page)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self._events.clear()
        self.call("Page.navigate", {"url": url}, session)
        end = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self._events):
            self._events.append(self._read(end))
        self._drain(settle)
        values = []
        for expression in evaluate:
            result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            values.append(result.get("result", {}).get("value"))
        self._drain(0.1)
        shot: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
        data = self.call("Page.captureScreenshot", shot, session)["data"]
        visit = PageVisit(screenshot=base64.b64decode(data), values=values)
        for event in self._events:
            if event.get("sessionId") != session:
                continue
            visit_event(visit, event.get("method", ""), event.get("params", {}))
        self.call("Target.closeTarget", {"targetId": target})
        return visit


def visit_event(visit: PageVisit, method: str, params: dict[str, Any]) -> None:
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        visit.errors.append(f"console.{params['type']}: {text}")
    elif method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        visit.errors.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        visit.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    elif method == "Network.requestWillBeSent":
        visit.requests.append(params.get("request", {}).get("url", ""))

