"""The report opens in a real browser: headless Chromium (Debian `chromium`, `make browser`) loads every image and
video of the page and renders a screenshot that is not blank.

Chromium is driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in a
NUL byte on file descriptors 3 and 4), so no websocket or browser-automation package is needed. The page itself has
no scripts; the checks run as DevTools `Runtime.evaluate` expressions.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from opensora_lib.data.video_io import write_video
from opensora_lib.report import build_report

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking / component-update / sync flags Chromium waits on the network, which this
# closed machine never answers; --no-sandbox because tests run as root.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--remote-debugging-pipe"]
WIDTH, HEIGHT = 1200, 1400

needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
    reason=f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium) to enable the browser test")

# Waits for every video to decode its first frame (or fail) and every image to decode, then reports them.
MEDIA_CHECK = """
(async () => {
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(v => new Promise(done => {
    if (v.readyState >= 2 || v.error) return done();
    v.addEventListener('loadeddata', done, {once: true});
    v.addEventListener('error', done, {once: true});
    setTimeout(done, 15000);
    v.preload = 'auto';
    v.load();
  })));
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return {
    images: images.map(i => ({name: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    videos: videos.map(v => ({name: v.parentElement.textContent, ready: v.readyState, width: v.videoWidth,
                              height: v.videoHeight, error: v.error ? v.error.code : null})),
  };
})()
"""


class DevTools:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, chromium: str, user_data_dir: Path, log: Path):
        self.log = log
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def _fds_3_and_4():  # in the child, before exec: Chromium reads fd 3 and writes fd 4
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        with open(log, "wb") as log_file:  # a file, not a pipe: an unread pipe could fill and stall Chromium
            self.proc = subprocess.Popen(
                [chromium, *FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={WIDTH},{HEIGHT}",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, pass_fds=(3, 4), preexec_fn=_fds_3_and_4)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._recv(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._recv(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, np.ndarray]:
    """Load ``page`` in headless Chromium; return the media report and a screenshot [H, W, 3] uint8."""
    from PIL import Image

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = DevTools(CHROMIUM, profile, tmp_path / "chromium.log")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        result = browser.call("Runtime.evaluate", {"expression": MEDIA_CHECK, "awaitPromise": True,
                                                   "returnByValue": True}, session=session, timeout=60)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    finally:
        browser.close()
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB"))
    return result["result"]["value"], pixels


def assert_media_loaded(media: dict) -> None:
    bad_images = [i for i in media["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    bad_videos = [v for v in media["videos"] if v["error"] is not None or v["ready"] < 2 or v["width"] == 0]
    assert not bad_images, f"images that did not load: {bad_images}"
    assert not bad_videos, f"videos that did not load (readyState < 2 or a MediaError code): {bad_videos}"


def assert_not_blank(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)  # kept in pytest's tmp dir for a look when the test fails
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    gray = pixels.astype(np.float64).mean(axis=2)
    not_background = (np.abs(pixels.astype(int) - pixels[0, 0].astype(int)).sum(axis=2) > 30).mean()
    assert gray.std() > 8.0, f"screenshot looks blank (pixel std {gray.std():.2f}): {path}"
    assert not_background > 0.02, f"screenshot is {1 - not_background:.1%} background: {path}"


def _fixture_report(root: Path) -> Path:
    """A small report: metrics, a PNG, a GIF and an MP4, a benchmark with the matmul ceiling."""
    (root / "metrics").mkdir(parents=True)
    (root / "metrics/data.json").write_text(json.dumps({"num_samples": 320, "num_train": 286}))
    (root / "metrics/vae_eval.json").write_text(json.dumps({"final_ssim_17f": 0.31, "compression": "4x8x8"}))
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    still = np.stack([np.broadcast_to(ramp, (64, 96)), np.broadcast_to(ramp[:64, None], (64, 96)),
                      np.full((64, 96), 90, np.uint8)], axis=-1)[None]
    clip = np.repeat(still, 8, axis=0).copy()
    for t in range(8):  # a moving square
        clip[t, 20:36, 8 * t:8 * t + 16] = rng.integers(0, 255, 3, dtype=np.uint8)
    write_video(root / "reports/figures/data/samples.png", still)
    write_video(root / "reports/figures/vae/recon.gif", clip, fps=8)
    write_video(root / "reports/figures/gallery/t2v.mp4", clip, fps=8, lossless=False)
    (root / "reports/bench").mkdir(parents=True)
    (root / "reports/bench/matmul.json").write_text(json.dumps({"gflop_per_s_by_threads": {"1": 50.0}}))
    (root / "reports/bench/stdit3.json").write_text(json.dumps(
        {"threads": 1, "workloads": [{"name": "w", "train": {"step_s": 0.5, "gflop": 10.0}}]}))
    return build_report(root, "reports/index.html")


@needs_chromium
def test_report_loads_every_image_and_video_in_chromium(tmp_path):
    page = _fixture_report(tmp_path / "repo")
    html_text = page.read_text()
    media, pixels = open_in_chromium(page, tmp_path)
    # the fixture's three figures all reach the browser, plus nothing unexpected
    assert len(media["images"]) == html_text.count("<img") == 2
    assert len(media["videos"]) == html_text.count("<video") == 1
    assert_media_loaded(media)
    assert media["videos"][0]["width"] == 96 and media["videos"][0]["height"] == 64
    assert_not_blank(pixels, tmp_path / "screenshot.png")


@needs_chromium
def test_browser_check_catches_broken_media(tmp_path):
    """The check itself: an image and a video whose data does not decode are reported, not passed."""
    page = tmp_path / "broken.html"
    junk = base64.b64encode(b"not a picture" * 20).decode()
    page.write_text(f"<!DOCTYPE html><html><body><h1>broken</h1><img alt='bad' src='data:image/png;base64,{junk}'>"
                    f"<video src='data:video/mp4;base64,{junk}'></video></body></html>")
    media, _ = open_in_chromium(page, tmp_path)
    assert media["images"][0]["width"] == 0
    assert media["videos"][0]["error"] is not None
    with pytest.raises(AssertionError, match="did not load"):
        assert_media_loaded(media)


REAL_REPORT = Path(__file__).resolve().parents[1] / "reports" / "index.html"


@needs_chromium
@pytest.mark.skipif(not REAL_REPORT.exists(), reason="reports/index.html not built yet (`dvc repro report`)")
def test_built_report_loads_in_chromium(tmp_path):
    page = tmp_path / "index.html"
    shutil.copy(REAL_REPORT, page)  # a copy: the pipeline may rewrite the report while the test runs
    media, pixels = open_in_chromium(page, tmp_path)
    assert media["images"] or media["videos"]
    assert_media_loaded(media)
    assert_not_blank(pixels, tmp_path / "screenshot.png")
