"""Memory of ``qgn serve`` under a burst of large uploads (docs/benchmarks.md, "qgn serve").

Starts ``qgn serve`` on a checkpoint, sends N concurrent uploads of one large PNG (a few hundred
KB of file, tens of megapixels of image), and reads the server's resident memory from
``/proc/PID/status`` (Linux) before, at its peak (``VmHWM``) and a few seconds after the burst.

    python benchmarks/serve_memory.py --checkpoint qgn-demo/run/best --megapixels 100 --clients 4
    python benchmarks/serve_memory.py --checkpoint qgn-demo/run/best --megapixels 36 --clients 4 \\
        --max-image-pixels 40000000 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident MB now, peak resident MB) of process ``pid``."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def big_png(megapixels: float) -> bytes:
    """A square RGB PNG of ``megapixels``: noise in one corner (something to see), the rest flat."""
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    image = Image.new("RGB", (side, side), (40, 90, 160))
    image.paste(Image.effect_noise((256, 256), 60).convert("RGB"), (0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def post(url: str, image: bytes, text: str) -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status, answer.read().decode()[:200]
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--megapixels", type=float, default=100.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="bursts, one after the other")
    parser.add_argument("--max-image-pixels", type=int, help="passed to qgn serve (default: its own)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the burst")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "qgn.cli",
        "serve",
        "--checkpoint",
        args.checkpoint,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-upload-mb",
        str(args.max_upload_mb),
    ]
    if args.max_image_pixels:
        command += ["--max-image-pixels", str(args.max_image_pixels)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        image = big_png(args.megapixels)
        post(url + "/api/predict", big_png(0.01), "warm up")  # the first prediction's one-off costs
        before, _ = rss_mb(server.pid)
        results = []
        started = time.time()
        for _ in range(args.rounds):
            threads = [
                threading.Thread(target=lambda: results.append(post(url + "/api/predict", image, "Anna in Paris")))
                for _ in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        seconds = time.time() - started
        time.sleep(args.settle)
        after, peak = rss_mb(server.pid)
        cpu = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
            platform.processor(),
        )
        print(
            json.dumps(
                {
                    "image": f"{args.megapixels:g} MP PNG, {len(image) / 1024:.0f} KB",
                    "clients": args.clients,
                    "rounds": args.rounds,
                    "statuses": sorted(code for code, _ in results),
                    "first_answer": results[0][1],
                    "burst_seconds": round(seconds, 1),
                    "rss_before_mb": round(before),
                    "rss_peak_mb": round(peak),
                    "rss_after_mb": round(after),
                    "cpu": cpu,
                    "cores": os.cpu_count(),
                },
                indent=2,
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
