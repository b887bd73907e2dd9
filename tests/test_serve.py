"""``msakit serve``: a real uvicorn server on 127.0.0.1 (free port) with the shipped model,
real HTTP requests (good clips, bad ones, concurrent ones), and the upload page driven in
headless Chromium through the DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="msakit serve needs the [serve] extra (fastapi)")
pytest.importorskip("uvicorn", reason="msakit serve needs the [serve] extra (uvicorn)")
requests = pytest.importorskip("requests", reason="the tests send requests with requests")

import uvicorn  # noqa: E402

from msakit.pretrained import from_pretrained  # noqa: E402
from msakit.serve import ServeLimits, create_app  # noqa: E402

WAV = "03bSnISJMiM_1.wav"
MP4 = "Oz06ZWiO20M_6.mp4"
WAV_TEXT = "anyhow it was really good"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, app):
        self.app = app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def temp_files(self) -> list[Path]:
        return [p for p in Path(self.app.state.temp_root).rglob("*")]


@pytest.fixture(scope="module")
def model():
    return from_pretrained()


@pytest.fixture(scope="module")
def server(model):
    with RunningServer(create_app(model, ServeLimits(max_upload_bytes=2_000_000,
                                                     timeout_s=300, workers=2))) as running:
        yield running


def _post(server, files=None, data=None, timeout=300):
    return requests.post(f"{server.url}/v1/predict", files=files, data=data, timeout=timeout)


def _wait_clean(server, seconds=30.0):
    deadline = time.time() + seconds
    while server.temp_files() and time.time() < deadline:
        time.sleep(0.1)
    return server.temp_files()


def test_health_and_page(server, model):
    health = requests.get(f"{server.url}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["modalities"] == ["text"]
    assert health["serves"] == "transcripts"
    assert health["text_context"] == str(model.config.model.text_context)
    page = requests.get(f"{server.url}/", timeout=30)
    assert page.status_code == 200 and 'type="file"' in page.text and "/v1/predict" in page.text


@pytest.mark.slow
def test_predict_text_and_clips(server, mosi_raw_dir):
    text = _post(server, data={"text": WAV_TEXT})
    assert text.status_code == 200, text.text
    body = text.json()
    assert body["score"] > 0.5 and body["polarity"] == "positive" and body["clip"] is None
    assert body["modalities"] == ["text"] and not body["low_quality"]

    with open(mosi_raw_dir / WAV, "rb") as handle:
        clip = _post(server, files={"file": (WAV, handle, "audio/wav")},
                     data={"text": WAV_TEXT})
    assert clip.status_code == 200, clip.text
    answer = clip.json()
    assert answer["clip"] == WAV and answer["text_source"] == "given"
    assert answer["score"] == pytest.approx(body["score"], abs=1e-5)  # text-only model
    assert answer["info"]["duration_s"] > 1
    for key in ("score", "polarity", "class7", "class7_name", "contributions", "warnings"):
        assert key in answer

    with open(mosi_raw_dir / MP4, "rb") as handle:  # a video with its transcript
        video = _post(server, files={"file": (MP4, handle, "video/mp4")},
                      data={"text": "a really ambitious weird failure"})
    assert video.status_code == 200 and video.json()["info"]["has_video"] is True

    with open(mosi_raw_dir / WAV, "rb") as handle:  # no transcript: offline ASR
        asr = _post(server, files={"file": (WAV, handle, "audio/wav")})
    assert asr.status_code == 200, asr.text
    assert asr.json()["text_source"] == "asr" and asr.json()["low_quality"] is True
    assert any("ASR" in w for w in asr.json()["warnings"])
    assert _wait_clean(server) == []


def test_bad_requests(server, tmp_path):
    nothing = _post(server, data={})
    assert nothing.status_code == 422 and "field 'file'" in nothing.json()["detail"]

    unsupported = _post(server, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert unsupported.status_code == 415 and "'.txt'" in unsupported.json()["detail"]

    broken = _post(server, files={"file": ("broken.mp4", os.urandom(20_000), "video/mp4")},
                   data={"text": "fine"})
    assert broken.status_code == 422
    detail = broken.json()["detail"]
    assert "broken.mp4" in detail and str(server.app.state.temp_root) not in detail

    empty = _post(server, files={"file": ("empty.wav", b"", "audio/wav")}, data={"text": "ok"})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]

    big = _post(server, files={"file": ("big.wav", b"\0" * 3_000_000, "audio/wav")},
                data={"text": "ok"})
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    assert _wait_clean(server) == []


@pytest.mark.slow
def test_concurrent_requests_and_health_stays_fast(server, mosi_raw_dir):
    payload = (mosi_raw_dir / WAV).read_bytes()

    def one(i):
        return _post(server, files={"file": (f"clip{i}.wav", payload, "audio/wav")},
                     data={"text": WAV_TEXT if i % 2 else "what a waste of time"})

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(4)]
        time.sleep(0.2)
        started = time.perf_counter()
        health = requests.get(f"{server.url}/healthz", timeout=30)
        health_seconds = time.perf_counter() - started
        answers = [f.result() for f in futures]
    assert health.status_code == 200
    assert health_seconds < 5, f"/healthz took {health_seconds:.1f} s during predictions"
    assert [a.status_code for a in answers] == [200] * 4
    scores = [a.json()["score"] for a in answers]
    assert scores[1] == scores[3] and scores[0] == scores[2] and scores[1] > scores[0]
    assert sorted(a.json()["clip"] for a in answers) == [f"clip{i}.wav" for i in range(4)]
    assert _wait_clean(server) == []


def test_time_limit_gives_504_and_cleans_up(model, mosi_raw_dir):
    app = create_app(model, ServeLimits(timeout_s=0.01, workers=1))
    with RunningServer(app) as running, open(mosi_raw_dir / WAV, "rb") as handle:
        answer = _post(running, files={"file": (WAV, handle, "audio/wav")},
                       data={"text": WAV_TEXT})
        assert answer.status_code == 504 and "longer than" in answer.json()["detail"]
        assert _wait_clean(running, 120) == []


# --------------------------------------------------------------------------------------------
# The page in headless Chromium (DevTools protocol over a websocket; no playwright)
# --------------------------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class _DevToolsPage:
    """One Chromium page driven over the DevTools protocol (a websocket)."""

    def __init__(self, ws):
        self.ws = ws
        self.counter = 0

    async def call(self, method, **params):
        self.counter += 1
        ident = self.counter
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        return result["result"].get("value")

    async def wait_for(self, expression, seconds):
        for _ in range(int(seconds * 10)):
            if await self.evaluate(expression):
                return
            await asyncio.sleep(0.1)

    async def open(self, url):
        await self.call("Page.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=900, height=820,
                        deviceScaleFactor=1, mobile=False)
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && "
                            "!!document.getElementById('model').textContent", 20)

    async def screenshot(self, shot: Path):
        image = await self.call("Page.captureScreenshot", format="png")
        shot.write_bytes(base64.b64decode(image["data"]))


async def _drive_page(ws_url: str, page_url: str, clip: Path, text: str, shot: Path) -> dict:
    """Upload ``clip`` with ``text`` on the page; the result's score, error and text."""
    import websockets

    async with websockets.connect(ws_url, max_size=None) as ws:
        page = _DevToolsPage(ws)
        await page.open(page_url)
        document = await page.call("DOM.getDocument")
        node = await page.call("DOM.querySelector", nodeId=document["root"]["nodeId"],
                               selector="#file")
        await page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(clip)])
        await page.evaluate(f"document.getElementById('text').value = {json.dumps(text)}")
        await page.evaluate("document.getElementById('submit').click()")
        await page.wait_for("!!document.getElementById('score') || "
                            "!!document.querySelector('#result .error')", 120)
        state = {
            "score": await page.evaluate("document.getElementById('score')?.textContent"),
            "error": await page.evaluate(
                "document.querySelector('#result .error')?.textContent"),
            "result": await page.evaluate("document.getElementById('result').innerText"),
        }
        await page.screenshot(shot)
        return state


async def _drive_utterances(ws_url: str, page_url: str, utterances: list[str],
                            shot: Path) -> dict:
    """Score one video's ``utterances`` in the page's utterance mode."""
    import websockets

    async with websockets.connect(ws_url, max_size=None) as ws:
        page = _DevToolsPage(ws)
        await page.open(page_url)
        await page.wait_for("!document.getElementById('modes').hidden", 20)
        state = {"modes_shown": await page.evaluate(
            "!document.getElementById('modes').hidden")}
        await page.evaluate("document.querySelector('input[value=utterances]').click()")
        await page.evaluate(
            f"document.getElementById('utterances').value = {json.dumps(chr(10).join(utterances))}")
        await page.evaluate("document.getElementById('submit').click()")
        await page.wait_for("!!document.getElementById('video-score') || "
                            "!!document.querySelector('#result .error')", 120)
        state.update({
            "video_score": await page.evaluate(
                "document.getElementById('video-score')?.textContent"),
            "error": await page.evaluate(
                "document.querySelector('#result .error')?.textContent"),
            "scores": await page.evaluate(
                "[...document.querySelectorAll('#utterance-table .uscore')]"
                ".map(c => c.textContent)"),
            "rows": await page.evaluate(
                "[...document.querySelectorAll('#utterance-table tr.utterance')]"
                ".map(r => r.innerText)"),
            "context_note": await page.evaluate(
                "document.getElementById('context-note').textContent"),
        })
        await page.screenshot(shot)
        return state


class _Chromium:
    """A headless Chromium with its DevTools endpoint; the first page's websocket URL."""

    def __init__(self, profile: Path):
        self.profile = profile

    def __enter__(self):
        browser = _chromium()
        if browser is None:
            pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
        port = _free_port()
        self.process = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        targets = None
        while time.time() < deadline:
            try:
                targets = requests.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                if any(t.get("type") == "page" for t in targets):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        assert targets, "chromium's DevTools endpoint did not come up"
        self.ws_url = next(t for t in targets if t.get("type") == "page")["webSocketDebuggerUrl"]
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)


@pytest.mark.slow
def test_upload_page_in_headless_chromium(server, mosi_raw_dir, tmp_path):
    pytest.importorskip("websockets", reason="the page test drives Chromium with websockets")
    shot = tmp_path / "serve_page.png"
    with _Chromium(tmp_path / "profile") as browser:
        state = asyncio.run(_drive_page(browser.ws_url, f"{server.url}/",
                                        mosi_raw_dir / WAV, WAV_TEXT, shot))
    assert state["error"] is None, state
    assert float(state["score"]) > 0.5, state
    assert "positive" in state["result"] and WAV_TEXT in state["result"]
    assert shot.stat().st_size > 10_000
    if os.environ.get("MSAKIT_UPDATE_SCREENSHOT"):
        shutil.copy(shot, DOCS / "serve_page.png")


@pytest.mark.slow
def test_utterance_list_on_the_page_in_headless_chromium(tmp_path):
    """The page's utterance mode posts one video's lines as ``{"utterances": [...]}`` and shows
    each line's score, in order, read with its neighbours, as the JSON API answers them."""
    pytest.importorskip("websockets", reason="the page test drives Chromium with websockets")
    from msakit.config_schema import TextContextConfig

    reads_context = from_pretrained()
    reads_context.config.model.text_context = TextContextConfig(mode="both", k=1)
    reads_context.config.data.max_text_tokens = 128
    utterances = ["i went to see it last night", "and honestly it was wonderful",
                  "but the ending dragged on forever"]
    shot = tmp_path / "serve_utterances.png"
    with RunningServer(create_app(reads_context)) as server, \
            _Chromium(tmp_path / "profile") as browser:
        state = asyncio.run(_drive_utterances(browser.ws_url, f"{server.url}/", utterances,
                                              shot))
        expected = requests.post(f"{server.url}/v1/predict", json={"utterances": utterances},
                                 timeout=300).json()
    assert state["error"] is None and state["modes_shown"], state
    assert "both:1" in state["context_note"]
    assert [float(s) for s in state["scores"]] == pytest.approx(
        [round(r["score"], 2) for r in expected], abs=0.006)
    assert [row.split("\t")[1] for row in state["rows"]] == utterances
    assert [row.split("\t")[-1] for row in state["rows"]] == [
        "0 before, 1 after", "1 before, 1 after", "1 before, 0 after"]
    mean = sum(r["score"] for r in expected) / len(expected)
    assert float(state["video_score"]) == pytest.approx(mean, abs=0.006)
    assert shot.stat().st_size > 10_000
    if os.environ.get("MSAKIT_UPDATE_SCREENSHOT"):
        shutil.copy(shot, DOCS / "serve_utterances.png")


def test_a_transcript_over_the_limit_is_refused_before_tokenizing(model, monkeypatch):
    import msakit.predict

    tokenized = []
    real = msakit.predict.predict_texts

    def counting(texts, *args, **kwargs):
        tokenized.append(len(texts[0]))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(msakit.predict, "predict_texts", counting)
    app = create_app(model, ServeLimits(max_text_chars=200, workers=1))
    with RunningServer(app) as server:
        for text in ("a" * 201, "word " * 2_000_000):  # just over; 10 MB
            for files in (None, {"unused": ("", b"", "text/plain")}):  # urlencoded, multipart
                answer = _post(server, files=files, data={"text": text}, timeout=60)
                assert answer.status_code == 413, answer.text
                assert answer.json()["detail"] == (
                    "field 'text' is over the limit of 200 characters "
                    "(msakit serve --max-text-chars)")
        assert tokenized == []
        fine = _post(server, data={"text": "i loved it " * 18}, timeout=60)
        assert fine.status_code == 200, fine.text
        assert tokenized == [len("i loved it " * 18) - 1]
def test_utterance_list_of_one_video(model):
    """``{"utterances": [...]}``: one video's transcripts in order, each read with its
    neighbours by a model that reads text context; one utterance alone says it had none."""
    from msakit.config_schema import TextContextConfig
    from msakit.pretrained import from_pretrained

    reads_context = from_pretrained()
    reads_context.config.model.text_context = TextContextConfig(mode="both", k=1)
    reads_context.config.data.max_text_tokens = 128
    utterances = ["i went to see it last night", "and honestly it was wonderful", "go see it"]
    with RunningServer(create_app(reads_context)) as server:
        answer = requests.post(f"{server.url}/v1/predict", json={"utterances": utterances},
                               timeout=300)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [r["text"] for r in body] == utterances
        assert [(r["info"]["context"]["previous"], r["info"]["context"]["next"])
                for r in body] == [(0, 1), (1, 1), (1, 0)]
        one = requests.post(f"{server.url}/v1/predict", json={"utterances": utterances[1:2]},
                            timeout=300).json()
        assert one[0]["info"]["context"] == {"mode": "both:1", "previous": 0, "next": 0}
        assert any("without context" in w for w in one[0]["warnings"])
        assert abs(one[0]["score"] - body[1]["score"]) > 1e-3  # the neighbours count
        for bad in ({"utterances": []}, {"utterances": ["fine", " "]}, {"texts": ["a"]}, [1]):
            refused = requests.post(f"{server.url}/v1/predict", json=bad, timeout=60)
            assert refused.status_code == 422 and "utterances" in refused.json()["detail"]
        too_long = requests.post(f"{server.url}/v1/predict", timeout=60,
                                 json={"utterances": ["fine", "a" * 10_001]})
        assert too_long.status_code == 413 and "utterance 2" in too_long.json()["detail"]
    reads_alone = from_pretrained()
    reads_alone.config.model.text_context = TextContextConfig(mode="none")
    with RunningServer(create_app(reads_alone)) as server:  # a model that reads clips alone
        body = requests.post(f"{server.url}/v1/predict", json={"utterances": utterances},
                             timeout=300).json()
        assert [r["info"]["context"]["mode"] for r in body] == ["none"] * 3
