"""``qgn serve``: the JSON API's contract (TestClient) and the page, driven in a real Chromium."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from qgn.api import load
from qgn.serving.app import create_app, synthetic_examples

from fakes import free_port

ARTIFACTS = Path(os.environ.get("QGN_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    # Every entity is kept and given a box: the page and API are under test here, not the model.
    return load(tiny_checkpoint, device="cpu", score_threshold=0.0, no_target_threshold=1.0)


@pytest.fixture(scope="module")
def client(predictor):
    from fastapi.testclient import TestClient

    return TestClient(create_app(predictor, synthetic_examples(2), max_upload_mb=0.05, max_image_pixels=250_000))


def jpeg(size=(96, 64), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_health_and_page(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'id="image"' in page.text and 'id="entities"' in page.text
    # Usable offline: nothing is fetched from another host (no external script, style, font or image).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert "@import" not in page.text and "url(" not in page.text


def test_predict_returns_the_schema_of_predict_json(client, predictor, tiny_checkpoint, tmp_path):
    example = client.get("/api/examples").json()["examples"][0]
    image = client.get(example["image"]).content
    answer = client.post("/api/predict", data={"text": example["text"]}, files={"image": ("post.jpg", image)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["image_size"] == list(Image.open(io.BytesIO(image)).size)
    assert body["entities"], "score_threshold 0 keeps every query's best span"
    # The same entities, key for key, as qgn predict --json on the same post and thresholds.
    path = tmp_path / "post.jpg"
    path.write_bytes(image)
    assert body["entities"] == predictor.predict(str(path), example["text"])
    assert set(body["entities"][0]) == {"start", "end", "char_start", "char_end", "text", "type", "score", "box"}


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("not an image", 415, "not a readable image"),
        ("empty text", 400, "empty text"),
        ("too large", 413, "too large"),
        ("no image", 400, "no image"),
        ("empty file", 400, "empty"),
        ("no text field", 400, "empty text"),
    ],
)
def test_bad_uploads_get_a_4xx_with_a_json_error(client, case, status, words):
    data, files = {"text": "Anna met Hugo"}, {"image": ("post.jpg", jpeg())}
    if case == "not an image":
        files = {"image": ("post.jpg", b"this is not a picture")}
    elif case == "empty text":
        data = {"text": "   "}
    elif case == "too large":  # the client's limit is 0.05 MB
        noise = Image.effect_noise((400, 400), 90).convert("RGB")
        buffer = io.BytesIO()
        noise.save(buffer, format="PNG")
        files = {"image": ("big.png", buffer.getvalue())}
    elif case == "no image":
        files = {}
    elif case == "empty file":
        files = {"image": ("post.jpg", b"")}
    elif case == "no text field":
        data = {}
    answer = client.post("/api/predict", data=data, files=files)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


def test_wrong_method_and_unknown_route_are_json_4xx(client):
    assert client.get("/api/predict").status_code == 405
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.get("/examples/99").status_code == 404


# --------------------------------------------------------------------------- the browser test
@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qgn.cli",
            "serve",
            "--checkpoint",
            str(tiny_checkpoint),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--score-threshold",
            "0",
            "--no-target-threshold",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                assert answer.status == 200
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise AssertionError("qgn serve did not come up:\n" + process.stdout.read()) from None
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_page_in_a_real_browser(server, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    upload = tmp_path / "post.jpg"
    upload.write_bytes(synthetic_examples(1)[0].image)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            outside = []  # any request that leaves the server would fail offline
            page.on("request", lambda r: None if r.url.startswith(server) else outside.append(r.url))
            page.goto(server + "/")
            page.set_input_files("#image", str(upload))
            page.fill("#text", synthetic_examples(1)[0].text)
            page.click("#submit")
            page.wait_for_selector("#entities tbody tr.entity", timeout=60_000)
            rows = page.locator("#entities tbody tr.entity")
            assert rows.count() >= 1
            first = rows.nth(0).locator("td")
            assert first.nth(2).inner_text() in {"PER", "LOC", "ORG", "OTHER"}
            assert re.fullmatch(r"\d+, \d+, \d+, \d+", first.nth(4).inner_text())  # no-target 1: every entity a box
            boxes = int(page.get_attribute("#canvas", "data-boxes"))
            assert boxes == rows.count()
            # The boxes are on the canvas: its pixels hold the palette's first colour (#e6194b).
            found = page.evaluate("""() => {
                const c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) {
                    if (Math.abs(d[i] - 230) < 6 && Math.abs(d[i+1] - 25) < 6 && Math.abs(d[i+2] - 75) < 6) n++;
                }
                return n;
            }""")
            assert found > 50, "no box outline of the first entity's colour on the canvas"
            assert "entities" in page.inner_text("#status")
            page.screenshot(path=str(shot), full_page=True)
            assert outside == []
        finally:
            browser.close()
    print(f"\nscreenshot of the served page: {shot}")
    assert shot.stat().st_size > 1000


def test_the_api_docs_render_in_a_real_browser_without_internet(server, chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            outside = []
            page.on("request", lambda r: None if r.url.startswith(server) else outside.append(r.url))
            page.goto(server + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)  # Swagger UI drew the operations
            assert "/api/predict" in page.inner_text("#swagger-ui")
            assert outside == []
        finally:
            browser.close()


def test_text_past_the_model_length_is_flagged_in_the_answer(client):
    short = client.post("/api/predict", data={"text": "Anna met Hugo"}, files={"image": ("post.jpg", jpeg())}).json()
    assert (short["words"], short["words_read"]) == (3, 3) and "warning" not in short
    long = client.post(
        "/api/predict", data={"text": " ".join(["Paris"] * 200)}, files={"image": ("post.jpg", jpeg())}
    ).json()
    assert long["words"] == 200 and long["words_read"] == 62  # the tiny model reads 64 sub-words with [CLS], [SEP]
    assert "longer than the model reads" in long["warning"] and "first 62 of 200 words" in long["warning"]
    assert all(e["end"] <= 62 for e in long["entities"])


def png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 0).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_the_pixel_cap_is_checked_before_decoding(client, monkeypatch):
    # A small file can hold a huge image: 1000 x 1000 black pixels is a 1 KB PNG (the byte cap is 50 KB).
    bomb = png((1000, 1000))
    assert len(bomb) < 10_000
    from PIL import ImageFile

    decoded, load = [], ImageFile.ImageFile.load

    def counting_load(self, *args, **kwargs):
        decoded.append(self.size)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    answer = client.post("/api/predict", data={"text": "Anna"}, files={"image": ("bomb.png", bomb)})
    assert answer.status_code == 413
    assert answer.json()["error"] == (
        "image too large: 1000 x 1000 pixels (1.0 megapixels), over this server's "
        "limit of 0.25 megapixels (qgn serve --max-image-pixels)"
    )
    assert decoded == [], "refused from the header, nothing decoded"
    assert (
        client.post("/api/predict", data={"text": "Anna"}, files={"image": ("ok.png", png((500, 500)))}).status_code
        == 200
    )  # 0.25 MP: at the cap
    assert decoded and set(decoded) == {(500, 500)}  # load() may be called again on a loaded image


def test_a_json_body_is_told_to_send_a_form(client):
    answer = client.post("/api/predict", json={"text": "Anna met Hugo", "image": "post.jpg"})
    assert answer.status_code == 415
    assert answer.json()["error"].startswith(
        "send multipart/form-data with the fields image (a file) and text, not application/json"
    )


def test_messages_do_not_leak_internals(client):
    for data in (b"this is not a picture", jpeg()[:200]):
        answer = client.post("/api/predict", data={"text": "Anna"}, files={"image": ("post.jpg", data)})
        assert answer.status_code == 415, answer.text
        message = answer.json()["error"]
        assert message.startswith("not a readable image: post.jpg: cannot read image")
        assert "BytesIO" not in message and " at 0x" not in message and "PIL" not in message


def test_the_api_docs_need_no_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    # Every script, style and icon is served here, nothing from a CDN.
    assert not re.search(r"""(src|href|url)\s*[=:(]\s*["']?(https?:)?//""", page.text), page.text
    for path in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
        assert client.get(path).status_code == 200, path
    assert client.get("/docs-files/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
