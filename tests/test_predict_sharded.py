"""``qgn predict --input`` over several processes (gloo on CPU) writes what one process writes,
and ``--resume`` continues an interrupted output without redoing or repeating posts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qgn.data import read_dataset

from fakes import free_port

BATCH = 8


def _predict(checkpoint: Path, source: Path, output: Path, processes: int = 1, resume: bool = False):
    args = [
        "-m",
        "qgn.cli",
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(source),
        "--output",
        str(output),
        "--score-threshold",
        "0",
        "--batch-size",
        str(BATCH),
        "--device",
        "cpu",
        "--no-progress",
    ]
    if resume:
        args.append("--resume")
    if processes > 1:  # the documented command; --multi_gpu is accelerate's name for "spawn with torchrun"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def source(tiny_bench, tmp_path_factory) -> Path:
    """The benchmark's 96 training posts as predict input, with one bad line (its image is missing)."""
    posts = read_dataset(str(tiny_bench), split="train", image_dir=str(tiny_bench / "images"))
    path = tmp_path_factory.mktemp("sharded") / "posts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, post in enumerate(posts):
            f.write(json.dumps({"id": post.id, "tokens": post.tokens, "image": post.image_path}) + "\n")
            if i == 20:
                f.write(json.dumps({"id": "bad", "text": "Anna here", "image": "missing.jpg"}) + "\n")
    return path


@pytest.fixture(scope="module")
def one_process(tiny_checkpoint, source) -> bytes:
    out = source.with_name("one.jsonl")
    done = _predict(tiny_checkpoint, source, out)
    assert done.returncode == 1, done.stderr  # 1: a line failed, the rest were written
    assert "posts.jsonl:22: image not found" in done.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 96 and all(json.loads(line)["entities"] for line in lines[:5])
    return out.read_bytes()


def test_two_processes_write_the_bytes_of_one(tiny_checkpoint, source, one_process, tmp_path):
    out = tmp_path / "two.jsonl"
    done = _predict(tiny_checkpoint, source, out, processes=2)
    assert done.returncode != 0  # the process that owned the bad line exits with 1
    assert out.read_bytes() == one_process
    counts = {int(i): int(k) for i, k in re.findall(r"process (\d)/2: (\d+) posts", done.stderr)}
    assert set(counts) == {0, 1} and sum(counts.values()) == 96 and min(counts.values()) > 0, done.stderr
    assert done.stderr.count("image not found") == 1  # reported once, by its owner
    assert not out.with_name("two.jsonl.parts").exists()


def test_resume_of_a_cut_output_redoes_nothing(tiny_checkpoint, source, one_process, tmp_path):
    out = tmp_path / "cut.jsonl"
    cut = one_process.index(b"\n", len(one_process) // 2) + 40  # half the posts, and a line cut short
    out.write_bytes(one_process[:cut])
    kept = one_process[:cut].count(b"\n")
    done = _predict(tiny_checkpoint, source, out, processes=2, resume=True)
    assert out.read_bytes() == one_process
    counts = [int(k) for k in re.findall(r"process \d/2: (\d+) posts", done.stderr)]
    assert sum(counts) == 96 - kept, done.stderr
    # One process resumes the same way.
    out.write_bytes(one_process[:cut])
    done = _predict(tiny_checkpoint, source, out, resume=True)
    assert out.read_bytes() == one_process
    assert f"wrote predictions for {96 - kept} posts" in done.stderr


def test_resume_of_interrupted_shards_keeps_their_parts(tiny_checkpoint, source, one_process, tmp_path):
    # The state a killed 2-process run leaves: no output yet, each part holding its first posts (in
    # row order, "row<TAB>line") and part 1 ending in a line cut short.
    out = tmp_path / "shards.jsonl"
    parts = out.with_name("shards.jsonl.parts")
    parts.mkdir()
    lines = one_process.decode().splitlines(keepends=True)
    rows = [r for r in range(97) if r != 21]  # row 21 is the bad line: it writes nothing
    mine = {0: [], 1: []}
    for row, line in zip(rows, lines):
        mine[(row // BATCH) % 2].append(f"{row}\t{line}")
    (parts / "part-00000-of-00002.jsonl").write_text("".join(mine[0][:20]))
    (parts / "part-00001-of-00002.jsonl").write_text("".join(mine[1][:12]) + mine[1][12][:30])
    done = _predict(tiny_checkpoint, source, out, processes=2, resume=True)
    assert out.read_bytes() == one_process
    counts = {int(i): int(k) for i, k in re.findall(r"process (\d)/2: (\d+) posts", done.stderr)}
    assert counts == {0: len(mine[0]) - 20, 1: len(mine[1]) - 12}, done.stderr
    # Parts of another number of processes are refused, not mixed in.
    parts.mkdir()
    (parts / "part-00000-of-00003.jsonl").write_text("")
    refused = _predict(tiny_checkpoint, source, out, processes=2, resume=True)
    assert refused.returncode != 0 and "another number of processes" in refused.stderr
