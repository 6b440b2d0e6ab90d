"""benchmarks/serve_memory.py, whose figures docs/benchmarks.md gives, measures a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_memory.py"


def test_serve_memory_script_reports_the_burst(tiny_checkpoint):
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--checkpoint",
            str(tiny_checkpoint),
            "--megapixels",
            "1",
            "--clients",
            "2",
            "--max-image-pixels",
            "500000",
            "--settle",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["statuses"] == [413, 413]  # 1 MP over a 0.5 MP cap
    assert "over this server's limit of 0.5 megapixels" in report["first_answer"]
    assert 0 < report["rss_before_mb"] <= report["rss_peak_mb"] and report["rss_after_mb"] > 0
