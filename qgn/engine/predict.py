"""``qgn predict``: run a trained checkpoint on one (image, text) post or a JSON-lines batch."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from qgn.errors import DataError, QGNError


def _batch_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """``(line number, row)`` of each non-blank input line, or ``(line, DataError)`` for a bad one
    (the others still run). A row is ``{"id", "text" or "tokens", "image"}``; image paths are
    relative to the file's folder; a repeated id is an error for the whole file."""
    from qgn.data.jsonl import parse_json_lines

    seen: dict[str, int] = {}
    for number, obj in parse_json_lines(path, what="input file"):
        if isinstance(obj, DataError):  # bad JSON: reported, the other lines still run
            yield number, obj
            continue
        if not isinstance(obj, dict) or not (isinstance(obj.get("text"), str) or "tokens" in obj):
            yield (
                number,
                DataError(
                    'each line needs a "text" string or a "tokens" list (and optional "id", "image")', str(path), number
                ),
            )
            continue
        post_id = str(obj.get("id", number))
        if post_id in seen:
            raise DataError(
                f"id {post_id!r} repeats the post of line {seen[post_id]}; ids must be unique", str(path), number
            )
        seen[post_id] = number
        image = obj.get("image")
        if image is not None and not isinstance(image, str):
            yield number, DataError('"image" must be a path string', str(path), number)
            continue
        if image is not None and not Path(image).is_absolute():
            image = str(path.parent / image)
        yield number, {"id": post_id, "text": obj.get("text"), "tokens": obj.get("tokens"), "image": image}


def predict_file(
    predictor: Any,
    path: Path,
    out: TextIO,
    batch_size: int = 16,
    rank: int = 0,
    world: int = 1,
    after_row: int = -1,
    tag_rows: bool = False,
    progress: bool = False,
) -> tuple[int, list[str]]:
    """Predict the good lines of a JSON-lines input into ``out`` in input order, ``batch_size``
    posts in memory at a time. Returns the number of posts written and one message per bad line.

    Batches are fixed by row (the n-th non-blank line is row n-1; batch k holds rows
    ``[k * batch_size, (k + 1) * batch_size)``), so any split of the work sees the same batches and
    writes the same bytes. Process ``rank`` of ``world`` takes batches ``k % world == rank``;
    rows up to ``after_row`` are done already (resume). ``tag_rows`` writes ``row<TAB>json`` lines
    (a shard's part file, merged by row later)."""
    from tqdm.auto import tqdm

    from qgn.api import entity_dict

    written, failures = 0, []
    chunk: list[tuple[int, Any, Any]] = []
    label = "predict" if world == 1 else f"predict {rank}/{world}"
    bar = tqdm(desc=label, unit="post", position=rank, disable=not progress, dynamic_ncols=True)

    def flush() -> None:
        nonlocal written
        if not chunk:
            return
        results = predictor.predict_posts([p for _, p, _ in chunk], [img for _, _, img in chunk], batch_size=batch_size)
        for (row, post, _), preds in zip(chunk, results):
            line = json.dumps({"id": post.id, "entities": [entity_dict(post, e) for e in preds]}, ensure_ascii=False)
            out.write(f"{row}\t{line}\n" if tag_rows else line + "\n")
        out.flush()  # a crash loses at most this batch; --resume continues after the last full line
        written += len(chunk)
        bar.update(len(chunk))
        chunk.clear()

    batch_of_chunk = None
    for row, (number, item) in enumerate(_batch_rows(path)):
        batch = row // batch_size
        if row <= after_row or batch % world != rank:
            continue
        if batch != batch_of_chunk:
            flush()
            batch_of_chunk = batch
        if isinstance(item, DataError):
            failures.append(str(item))
            continue
        try:
            post, image = predictor.make_post(item["text"], item["image"], post_id=item["id"], tokens=item["tokens"])
        except QGNError as err:
            failures.append(str(err) if isinstance(err, DataError) and err.line else f"{path}:{number}: {err}")
            continue
        chunk.append((row, post, image))
    flush()
    bar.close()
    return written, failures


# ----------------------------------------------------------------------------- output files, resume, shards
def _complete_lines(file: Path) -> int:
    """Cut ``file`` after its last newline (a line cut short by a crash is dropped); returns its size."""
    size = file.stat().st_size
    if size == 0:
        return 0
    with open(file, "rb+") as f:
        at, keep = size, None
        while at > 0 and keep is None:  # scan back for the last newline, 64 KB at a time
            step = min(at, 65536)
            f.seek(at - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = at - step + cut + 1
            at -= step
        keep = keep or 0
        if keep != size:
            f.truncate(keep)
    return keep


def _last_line(file: Path) -> str | None:
    last = None
    with open(file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                last = line
    return last


def _row_of_id(path: Path, post_id: str, output: Path) -> int:
    for row, (_, item) in enumerate(_batch_rows(path)):
        if isinstance(item, dict) and item["id"] == post_id:
            return row
    raise QGNError(
        f"cannot resume: {output} ends with post {post_id!r}, which {path} does not hold; is it the "
        "output of this input?"
    )


def _done_rows(path: Path, output: Path) -> int:
    """The last input row that ``output`` (a plain output, in input order) holds; -1 if none."""
    if not output.is_file() or not _complete_lines(output):
        return -1
    last = _last_line(output)
    if last is None:
        return -1
    try:
        post_id = json.loads(last)["id"]
    except (ValueError, KeyError, TypeError):
        raise QGNError(f"cannot resume: the last line of {output} is not a qgn predict line") from None
    return _row_of_id(path, str(post_id), output)


def _done_rows_of_part(part: Path) -> int:
    if not part.is_file() or not _complete_lines(part):
        return -1
    last = _last_line(part)
    try:
        return int(last.split("\t", 1)[0]) if last else -1
    except ValueError:
        raise QGNError(f"cannot resume: {part} is not a qgn predict part file") from None


def _merge_parts(parts: list[Path], output: Path, after_row: int) -> None:
    """Append the parts' lines to ``output`` in row order (each part is in row order already)."""
    import heapq

    def lines(part: Path) -> Iterator[tuple[int, str]]:
        with open(part, encoding="utf-8") as f:
            for line in f:
                row, _, text = line.partition("\t")
                if int(row) > after_row:
                    yield int(row), text

    with open(output, "a", encoding="utf-8") as out:
        for _, text in heapq.merge(*(lines(p) for p in parts)):
            out.write(text)


def predict_to_file(
    predictor: Any,
    path: Path,
    output: Path,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    resume: bool = False,
    progress: bool = True,
    barrier: Any = None,
) -> tuple[int, list[str]]:
    """``qgn predict --input --output`` for process ``rank`` of ``world`` (``barrier()`` waits for
    them all). One process writes ``output`` directly; several write ``OUTPUT.parts/part-I-of-N``
    (``row<TAB>line``), which the main process merges into ``output`` in input order at the end.
    ``resume`` keeps what ``output`` and the parts hold and predicts the rest."""
    import shutil

    barrier = barrier or (lambda: None)
    parts_dir = output.with_name(output.name + ".parts")
    if not resume:
        if rank == 0:
            output.unlink(missing_ok=True)
            if parts_dir.exists():
                shutil.rmtree(parts_dir)
        barrier()
    elif parts_dir.is_dir():  # every process checks (one raising alone would leave the others waiting)
        other = [p.name for p in parts_dir.iterdir() if not p.name.endswith(f"-of-{world:05d}.jsonl")]
        if other:
            raise QGNError(
                f"cannot resume: {parts_dir} holds the parts of a run with another number of processes "
                f"({other[0]}); resume with that number, or start again without --resume"
            )
    done = -1
    if resume:  # rank 0 cuts a line left short by a crash first, then the others read where the output ends
        if rank == 0:
            done = _done_rows(path, output)
        barrier()
        if rank != 0:
            done = _done_rows(path, output)
    if world == 1:
        with open(output, "a", encoding="utf-8") as out:
            return predict_file(predictor, path, out, batch_size, after_row=done, progress=progress)
    parts_dir.mkdir(parents=True, exist_ok=True)
    part = parts_dir / f"part-{rank:05d}-of-{world:05d}.jsonl"
    after = max(done, _done_rows_of_part(part)) if resume else done
    with open(part, "a", encoding="utf-8") as out:
        result = predict_file(
            predictor, path, out, batch_size, rank, world, after_row=after, tag_rows=True, progress=progress
        )
    barrier()
    if rank == 0:
        _merge_parts(sorted(parts_dir.glob(f"part-*-of-{world:05d}.jsonl")), output, done)
        shutil.rmtree(parts_dir)
    barrier()
    return result


def add_inference_arguments(p: Any) -> None:
    """``--device``, ``--precision`` and the threshold overrides, shared by ``qgn predict`` and ``qgn serve``."""
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="fp32 (default), bf16 autocast, or auto (bf16 where the GPU or CPU has bf16 units)",
    )
    p.add_argument("--score-threshold", type=float, help="override the checkpoint's entity score threshold")
    p.add_argument("--no-target-threshold", type=float, help="override the no-target (no box) threshold")


def threshold_overrides(args: Any) -> dict[str, float]:
    """The thresholds given on the command line (:func:`add_inference_arguments`), for ``qgn.load``."""
    return {
        name: value
        for name, value in (
            ("score_threshold", args.score_threshold),
            ("no_target_threshold", args.no_target_threshold),
        )
        if value is not None
    }


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="find and ground the entities of new posts",
        description="Predict entities (word span, character offsets, text, type, score, pixel box or null).",
    )
    p.add_argument("--checkpoint", required=True, help="a QGN checkpoint folder (a run's best/)")
    p.add_argument("--image", help="image file of the post")
    p.add_argument("--text", help="text of the post")
    p.add_argument(
        "--input",
        help='JSON-lines batch: {"id", "text" or "tokens", "image"} per line; "tokens" (a '
        "benchmark's words) makes the word indices refer to them, so the output scores with qgn evaluate",
    )
    p.add_argument("--output", help="write JSON lines here instead of stdout (with --input)")
    p.add_argument(
        "--onnx",
        metavar="FILE.onnx",
        help="run the graph qgn export wrote from --checkpoint in onnxruntime (CPU) instead of PyTorch; "
        "the checkpoint still gives the tokenizer, image transform and post-processing",
    )
    p.add_argument("--draw", help="write the image with labelled boxes here (single post)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a readable list")
    add_inference_arguments(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="posts per batch (default 16); batches are fixed by input line, so a sharded run writes "
        "the same bytes as one process",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --input and --output: keep what an interrupted run wrote and predict the rest",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _processes(device: str | None) -> tuple[int, int, Any, str | None]:
    """``(rank, world size, barrier, device)``: one process, or one of several started by
    ``accelerate launch`` / ``torchrun`` (each on its own GPU when there are GPUs)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None, device
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone, device or str(state.device)


def _predict_batch(args: Any, predictor: Any) -> int:
    rank, world = args.rank, args.world
    if args.output:
        try:
            written, failures = predict_to_file(
                predictor,
                Path(args.input),
                Path(args.output),
                args.batch_size,
                rank,
                world,
                resume=args.resume,
                progress=not args.no_progress,
                barrier=args.barrier,
            )
        except KeyboardInterrupt as stop:
            # qgn.cli prints the hint
            stop.hint = (  # type: ignore[attr-defined]
                f"{args.output} keeps the posts predicted so far; continue with the same command and --resume"
            )
            raise
    else:
        if world > 1 or args.resume:
            raise QGNError("give --output FILE: several processes, and --resume, write to a file")
        written, failures = predict_file(predictor, Path(args.input), sys.stdout, batch_size=args.batch_size)
    for message in failures:
        print(f"qgn predict: skipped {message}", file=sys.stderr)
    if world > 1:
        print(f"process {rank}/{world}: {written} posts", file=sys.stderr)
    if rank == 0:
        where = f" to {args.output}" if args.output else ""
        what = (
            f"wrote predictions for {written} posts{where}"
            if world == 1
            else f"merged the predictions of {world} processes into {args.output}"
        )
        print(what + (f"; {len(failures)} lines failed (listed above)" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


DRAW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _check_arguments(args: Any) -> Path:
    """Everything that can be checked without the model, before it loads (tens of seconds for a
    full-size one): the options, the files named, the checkpoint's folder. Returns that folder."""
    import os

    from qgn.api import checkpoint_folder
    from qgn.modeling import QGNConfig

    if bool(args.input) == bool(args.text is not None):
        raise QGNError("give either --text (with --image) for one post, or --input FILE.jsonl for a batch")
    if args.input and (args.draw or args.image):
        raise QGNError("--draw and --image are for one post (--text); with --input each line names its image")
    if args.text is not None and not args.text.strip():
        raise QGNError("--text is empty: give the post's text")
    if not args.input and args.resume:
        raise QGNError("--resume is for --input with --output")
    if args.image is not None:
        if os.path.isdir(args.image):
            raise QGNError(
                f"--image {args.image} is a folder: give one image file (a folder of posts goes in an "
                "--input file, one line per post)"
            )
        if not os.path.isfile(args.image):
            raise QGNError(f"--image {args.image}: image not found")
    if args.draw:
        if not args.image:
            raise QGNError("--draw needs --image (the picture to draw the boxes on)")
        if Path(args.draw).suffix.lower() not in DRAW_SUFFIXES:
            raise QGNError(f"--draw {args.draw}: give a picture file name ending in .png or .jpg")
    for option, target in (("--draw", args.draw), ("--output", args.output)):
        if target and not Path(target).absolute().parent.is_dir():
            raise QGNError(f"{option} {target}: the folder {Path(target).absolute().parent} does not exist")
    if getattr(args, "onnx", None):
        if not Path(args.onnx).is_file():
            raise QGNError(f"--onnx {args.onnx}: no such file (qgn export --format onnx writes one)")
        if args.device not in (None, "cpu") or args.precision != "fp32":
            raise QGNError("--onnx runs on the CPU in fp32: drop --device and --precision")
    folder = checkpoint_folder(args.checkpoint)
    if args.text is not None and args.image is None and not QGNConfig.load(folder / "config.json").text_only:
        raise QGNError(
            "--text needs --image FILE: this checkpoint finds entities in an image and grounds them "
            "there (only a text-only model predicts from the text alone)"
        )
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise QGNError(f"--input {path}: no such file")
        if not sum(1 for _ in _batch_rows(path)):  # a repeated id raises here, before any output is opened
            raise DataError("no posts: the file is empty (one JSON object per line)", str(path))
    return folder


def _main(args: Any) -> int:
    from qgn.api import load

    folder = _check_arguments(args)
    thresholds = threshold_overrides(args)
    rank, world, barrier, device = _processes(args.device)
    args.rank, args.world, args.barrier = rank, world, barrier
    if world > 1 and not args.input:
        raise QGNError("several processes share out an --input file; one --text post needs one process")
    if args.onnx:
        from qgn.export import load_onnx

        predictor = load_onnx(args.onnx, folder, **thresholds)
    else:
        predictor = load(folder, device=device, precision=args.precision, **thresholds)

    if args.input:
        return _predict_batch(args, predictor)

    entities = predictor.predict(args.image, args.text)
    if args.json:
        print(json.dumps({"text": args.text, "image": args.image, "entities": entities}, ensure_ascii=False, indent=2))
    else:
        if not entities:
            print("no entities found")
        for e in entities:
            box = "no box" if e["box"] is None else "box " + ", ".join(f"{v:.0f}" for v in e["box"])
            print(f"{e['text']!r:<30} {e['type']:<8} score {e['score']:.2f}  {box}")
    if args.draw:
        from qgn.data.images import load_image
        from qgn.visualize import draw_entities

        # upright, as the model saw it: the boxes are in that frame
        draw_entities(load_image(args.image), entities, min_side=480).save(args.draw)
        print(f"drew the entities on {args.draw}", file=sys.stderr)
    return 0
