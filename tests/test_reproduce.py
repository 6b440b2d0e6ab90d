"""``qgn reproduce``: the paper's rows, one run per (row, seed) with the full model shared, skip of
finished runs, resume of interrupted ones, and tables rebuilt from whatever has finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from qgn.cli import main
from qgn.reproduce.grid import paper_tables, plan, table_rows


def test_rows_are_the_papers_and_carry_their_numbers():
    paper = paper_tables()
    expected = {"III": 7, "IV": 4, "V": 9, "VI": 9}
    for table, count in expected.items():
        rows = table_rows(table)
        assert len(rows) == count
        assert [r.label for r in rows] == list(paper[table]["rows"]), table
        assert sum(r.is_full for r in rows) == 1, f"{table} has exactly one full-model row"
    iii = {r.label: r.switches for r in table_rows("III")}
    assert iii["MQA"] == {"use_hvla": False, "use_mqd": False} and iii["HVLA+MQD"] == {"use_mqa": False}
    iv = {r.label: r.switches for r in table_rows("IV")}
    assert iv["L_pred"] == {"lambda_nt": 0.0, "lambda_con": 0.0} and iv["L_pred+L_con"] == {"lambda_nt": 0.0}
    vi = {r.label: r.switches for r in table_rows("VI")}
    # extraction (stride 1, start 1) -> BERT layers 1-4; only the injection moves, V stays the config's
    assert vi["1,1,3,2"] == {"text_extract_layers": [1, 2, 3, 4]}
    assert vi["3,3,3,2"] == {"text_extract_layers": [3, 6, 9, 12]}
    assert vi["3,1,3,1"] == {"vision_inject_layers": [1, 4, 7, 10]}
    assert vi["3,1,3,3"] == {"vision_inject_layers": [3, 6, 9, 12]}
    follow = {r.label: r for r in table_rows("VI", vi_visual="follow")}
    assert follow["3,1,3,1"].switches == {"vision_inject_layers": [1, 4, 7, 10], "vision_extract_layers": [1, 4, 7, 10]}
    assert follow["3,1,3,1"].slug != table_rows("VI")[7].slug and follow["3,1,3,2"].is_full
    assert paper["I"]["rows"]["QGN"][2] == 61.18 and paper["II"]["rows"]["All"][3] == 49.15
    assert paper["VI"]["rows"]["3,1,3,3"] == {"delta": -1.86, "GMNER": 59.32}


def test_the_full_model_runs_once_for_all_tables(tmp_path):
    runs = plan(tmp_path, ["I", "III", "IV", "V", "VI", "fig3"], seeds=2)
    # 1 full + 6 (III) + 3 (IV) + 8 (V) + 8 (VI) + 5 (fig3: Nq = 60 is the full model) rows, 2 seeds each
    assert len(runs) == 2 * (1 + 6 + 3 + 8 + 8 + 5)
    assert len({r.path for r in runs}) == len(runs)
    assert sum(r.path.parent.name == "full" for r in runs) == 2
    assert not [r for r in runs if "nq-60" in str(r.path)]
    # with a config of another Nq, Nq = 60 is a row of its own and that Nq is the full model
    other = plan(tmp_path, ["fig3"], seeds=1, base_model={"num_queries": 20})
    assert sorted(r.path.parent.name for r in other) == ["full", "nq-10", "nq-100", "nq-40", "nq-60", "nq-80"]


@pytest.fixture()
def grid_config(tiny_bench, tmp_path) -> Path:
    config = tmp_path / "grid.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0},
                "data": {"path": str(tiny_bench), "image_dir": str(tiny_bench / "images"), "tokenizer": "words"},
                "train": {"epochs": 3, "batch_size": 16, "lr": 1e-3, "eval_batch_size": 16, "tune_thresholds": False},
            }
        )
    )
    return config


def test_grid_runs_skips_resumes_and_aggregates(grid_config, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid"
    args = [
        "reproduce",
        "--config",
        str(grid_config),
        "--tables",
        "IV",
        "--seeds",
        "1",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    runs = sorted(str(p.parent.relative_to(out)) for p in out.glob("**/final_metrics.json"))
    assert runs == ["IV/l-pred-l-con/seed1", "IV/l-pred-l-nt/seed1", "IV/l-pred/seed1", "full/seed1"]
    saved = yaml.safe_load((out / "IV" / "l-pred" / "seed1" / "config.yaml").read_text())
    assert saved["model"]["lambda_nt"] == 0.0 and saved["model"]["lambda_con"] == 0.0 and saved["train"]["seed"] == 1
    tables = json.loads((out / "tables.json").read_text())
    rows = {r["row"]: r for r in tables["tables"]["IV"]["rows"]}
    full_f1 = json.loads((out / "full" / "seed1" / "final_metrics.json").read_text())["test"]["GMNER"]["f1"]
    assert rows["L_pred+L_nt+L_con"]["ours"]["mean"] == pytest.approx(full_f1)
    assert rows["L_pred+L_nt+L_con"]["delta"] == pytest.approx(0.0)
    assert rows["L_pred"]["paper"] == {"delta": -12.11, "GMNER": 49.07}
    md = (out / "tables.md").read_text()
    assert "| L_pred | " in md and "49.07 | -12.11 |" in md

    # Re-run: the finished runs are skipped (no qgn train at all).
    import qgn.reproduce.cli as cli

    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, **kw: started.append(cmd) or 0)
    capsys.readouterr()
    assert main(args) == 0
    assert started == [] and "4 finished, 0 to resume, 0 to start" in capsys.readouterr().out

    # An interrupted run is resumed with qgn train --resume; one that never saved starts again.
    (out / "IV" / "l-pred" / "seed1" / "final_metrics.json").unlink()
    shutil.rmtree(out / "full" / "seed1" / "checkpoint")
    (out / "full" / "seed1" / "final_metrics.json").unlink()
    assert main(args) == 0
    assert sorted(cmd[4] for cmd in started) == ["--config", "--resume"]
    assert any(cmd[5] == str(out / "IV" / "l-pred" / "seed1") for cmd in started if cmd[4] == "--resume")

    # Aggregate-only rebuilds the tables from what has finished, marking the missing cells.
    capsys.readouterr()
    assert main(["reproduce", "--aggregate-only", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| L_pred | missing |" in text and "| L_pred+L_nt+L_con | missing |" in text
    assert "| L_pred+L_con | " in text and "(n=1)" in text


def test_dry_run_prints_the_plan_and_runs_nothing(grid_config, tmp_path, capsys):
    out = tmp_path / "dry"
    assert (
        main(
            [
                "reproduce",
                "--config",
                str(grid_config),
                "--tables",
                "III,fig3",
                "--queries",
                "4,8",
                "--seeds",
                "2",
                "--output-dir",
                str(out),
                "--dry-run",
                "--shard",
                "1/2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    # the config's Nq is 8: Fig. 3's Nq = 8 is the full model, run once
    assert "plan: 16 runs for tables III, fig3 x 2 seed(s); shard 1/2: 8 of them" in text
    assert "estimate: " in text and "ms a step" in text
    assert not list(out.glob("**/final_metrics.json")) and not list(out.glob("**/*.yaml"))


def test_tables_all_is_every_table_and_leaves_ii_out_without_its_data(grid_config, tmp_path, capsys):
    from qgn.reproduce.grid import TABLES, parse_tables

    assert parse_tables("all") == list(TABLES) and parse_tables("VI,I") == ["I", "VI"]
    # the shipped FMNERG config points at no folder here: II is left out, said; VI is then refused on tiny
    assert (
        main(
            [
                "reproduce",
                "--config",
                str(grid_config),
                "--tables",
                "all",
                "--output-dir",
                str(tmp_path / "a"),
                "--dry-run",
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert "Table II left out" in captured.out and "Table VI needs 12-layer encoders" in captured.err


def test_bad_requests_are_refused_before_any_run(grid_config, tmp_path, capsys):
    base = ["reproduce", "--config", str(grid_config), "--output-dir", str(tmp_path / "x")]
    assert main([*base, "--tables", "VII"]) == 2
    assert main([*base, "--tables", "VI"]) == 2  # tiny 4-layer encoders cannot take Table VI's layers
    assert "Table VI needs 12-layer encoders" in capsys.readouterr().err
    assert main([*base, "--shard", "2/2"]) == 2
    assert main(["reproduce", "--aggregate-only", str(tmp_path)]) == 2


def _twelve_layer_tiny(**switches):
    from qgn.modeling import QGNConfig

    return QGNConfig.tiny(
        vocab_size=50,
        text_config={"num_hidden_layers": 12},
        vision_config={"num_hidden_layers": 12},
        text_extract_layers=[1, 4, 7, 10],
        vision_inject_layers=[2, 5, 8, 11],
        vision_extract_layers=[2, 5, 8, 11],
    ).replace(**switches)


def _vit_depth(config) -> int:
    from qgn.modeling import QGNModel

    vision = QGNModel(config).vision_encoder
    return len(getattr(vision, "vision_model", vision).encoder.layers)


def test_table_vi_keeps_the_vit_and_its_visual_layers():
    """Table VI varies where text goes in, not what the ViT is: every row reads V = {2, 5, 8, 11} and
    runs the ViT as deep as the full model (11 layers, the last one read), or 12 where text is injected
    after layer 12 (row 3 1 3 3). ``--vi-visual-layers follow`` is the other reading, with its own runs."""
    full_depth = _vit_depth(_twelve_layer_tiny())
    assert full_depth == 11
    for row in table_rows("VI"):
        config = _twelve_layer_tiny(**row.switches)
        assert config.vision_extract_layers == [2, 5, 8, 11], row.label
        assert _vit_depth(config) == max(full_depth, *config.vision_inject_layers), row.label
    follow = {r.label: r for r in table_rows("VI", vi_visual="follow")}
    assert _vit_depth(_twelve_layer_tiny(**follow["3,1,1,2"].switches)) == 5  # reads layers 2-5
    fixed = plan(Path("g"), ["VI"], 1)
    moved = plan(Path("g"), ["VI"], 1, vi_visual="follow")
    assert {r.path for r in fixed} & {r.path for r in moved} == {Path("g/full/seed1")}


def test_fig3_reads_the_full_models_runs_for_its_nq(tmp_path):
    """Fig. 3's point at the config's Nq is the full model: no run of its own, its figure is the full
    model's (tables built from finished runs only)."""
    from qgn.reproduce.aggregate import collect

    for name, f1 in (("full", 50.0), ("fig3/nq-10", 40.0)):
        folder = tmp_path / name / "seed1"
        folder.mkdir(parents=True)
        (folder / "final_metrics.json").write_text(json.dumps({"test": {"GMNER": {"f1": f1}}}))
    rows = {r["row"]: r for r in collect(tmp_path, ["fig3"], 1, (10, 60))["tables"]["fig3"]["rows"]}
    assert rows["Nq=60"]["ours"]["mean"] == 50.0 and rows["Nq=60"]["switches"] == {}
    assert rows["Nq=10"]["ours"]["mean"] == 40.0 and rows["Nq=10"]["delta"] == -10.0


# ----------------------------------------------------------------------------- --plus
def _yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plus_switches_are_what_the_plus_config_changes(tmp_path):
    """Model keys that differ (after --set on both, and the defaults filled) as they are, train keys as
    train.<key>; data, train.seed and keys equal in both (or equal to the default) are not switches."""
    from qgn.errors import QGNError
    from qgn.reproduce.cli import _plus
    from qgn.reproduce.grid import Plus

    base_raw = {
        "model": {"preset": "tiny", "num_queries": 8, "lambda_con": 0.5},
        "data": {"path": "/base/data", "tokenizer": "words"},
        "train": {"epochs": 3, "lr": 1e-3, "seed": 42},
    }
    plus_raw = {
        "model": {"preset": "tiny", "num_queries": 12, "lambda_con": 0.5, "lambda_nt": 1.0, "score_threshold": 0.1},
        "data": {"path": "/plus/data", "missing_images": "skip"},
        "train": {"epochs": 3, "lr": 1e-3, "layer_decay": 0.8, "seed": 7, "weight_decay": 0.01},
    }
    base = _yaml(tmp_path / "base.yaml", base_raw)
    plus_file = _yaml(tmp_path / "plus.yaml", plus_raw)
    # the --set reaches both: lr = 5e-4 in both is no switch; num_queries is set to 12 in both, neither
    from qgn.engine.settings import apply_overrides, load_run_file, settings_from_dict

    overrides = ["train.lr=5e-4", "data.path=/given"]
    base_dict = settings_from_dict(apply_overrides(load_run_file(str(base)), overrides)).to_dict()
    plus = _plus(str(plus_file), overrides, base_dict)
    # lambda_nt 1.0 and weight_decay 0.01 are the defaults (the base has them too): no switches
    assert plus.switches == {"num_queries": 12, "score_threshold": 0.1, "train.layer_decay": 0.8}
    assert plus.name == "plus" and plus.label == "QGN+ (plus, not the paper's)"
    assert _plus(str(plus_file), [*overrides, "model.num_queries=12"], base_dict).switches == plus.switches
    base_12 = settings_from_dict(apply_overrides(base_dict, ["model.num_queries=12"])).to_dict()
    assert _plus(str(plus_file), [*overrides, "model.num_queries=12"], base_12).switches == {
        "score_threshold": 0.1,
        "train.layer_decay": 0.8,
    }
    # Table I gets the row after QGN's, in a folder of its own; no other table has it
    rows = table_rows("I", base_model=base_dict["model"], plus=plus)
    assert [r.label for r in rows] == ["QGN", "QGN+ (plus, not the paper's)"]
    assert rows[1].switches == plus.switches and not rows[1].is_full
    assert rows[1].slug.startswith("qgn-plus-plus-") and len(rows[1].slug) == len("qgn-plus-plus-") + 8
    assert [r.label for r in table_rows("IV", plus=plus)] == [r.label for r in table_rows("IV")]
    runs = plan(tmp_path, ["I", "IV"], 2, base_model=base_dict["model"], plus=plus)
    assert sorted(str(r.path.relative_to(tmp_path)) for r in runs if "qgn-plus" in r.key) == [
        f"I/{rows[1].slug}/seed1",
        f"I/{rows[1].slug}/seed2",
    ]
    assert sum(r.path.parent.name == "full" for r in runs) == 2  # the full model's runs stay shared
    assert Plus.from_json(json.loads(json.dumps(plus.to_json()))) == plus
    # another plus config is another folder
    other = _plus(str(_yaml(tmp_path / "plus.yaml", {**plus_raw, "train": {"layer_decay": 0.7}})), overrides, base_dict)
    assert other.switches["train.layer_decay"] == 0.7 and other.row().slug != rows[1].slug

    # refused: another preset; nothing changed
    with pytest.raises(QGNError, match="preset"):
        _plus(str(_yaml(tmp_path / "p2.yaml", {"model": {"preset": "default"}})), overrides, base_dict)
    with pytest.raises(QGNError, match="no extra row"):
        _plus(str(_yaml(tmp_path / "p3.yaml", {**base_raw, "data": {}})), overrides, base_dict)


def test_run_config_puts_train_switches_in_train():
    from qgn.reproduce.grid import Run, run_config

    base = {"model": {"preset": "tiny", "num_queries": 8}, "data": {"path": "/d"}, "train": {"epochs": 3}}
    run = Run("gmner/x", "gmner", (("num_queries", 6), ("train.layer_decay", 0.8)), 2, Path("x"))
    raw = run_config(base, run)
    assert raw["model"] == {"preset": "tiny", "num_queries": 6}
    assert raw["train"] == {"epochs": 3, "layer_decay": 0.8, "seed": 2}
    assert base["train"] == {"epochs": 3}  # the base is not changed
    assert run.overrides == ["model.num_queries=6", "train.layer_decay=0.8", "train.seed=2"]


def test_plus_row_runs_beside_qgn_in_table_i(grid_config, tmp_path, capsys):
    """--plus: the dry run lists the QGN+ runs and counts them; the run's config.yaml has the plus
    config's model and train values on the base's data; Table I has a column for each row, in
    tables.md and tables.json, and --aggregate-only rebuilds the same."""
    base = yaml.safe_load(grid_config.read_text())
    plus_file = _yaml(
        tmp_path / "grid_plus.yaml",
        {
            "model": {**base["model"], "num_queries": 6},
            "data": {"path": str(tmp_path / "nowhere")},  # not used: the base's data is
            "train": {**base["train"], "layer_decay": 0.8},
        },
    )
    out = tmp_path / "plus"
    args = ["reproduce", "--config", str(grid_config), "--plus", str(plus_file), "--tables", "I", "--seeds", "1"]
    args += ["--set", "train.epochs=2", "--output-dir", str(out), "--no-progress"]
    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "plan: 2 runs for tables I x 1 seed(s); 0 finished, 0 to resume, 2 to start" in text
    plus_lines = [line for line in text.splitlines() if "/I/qgn-plus-grid-plus-" in line]
    assert len(plus_lines) == 1 and "(num_queries=6, train.layer_decay=0.8; seed 1)" in plus_lines[0]
    assert "for the 2 runs not finished" in text and "QGN+ row's levers" in text
    assert not list(out.glob("**/*.yaml"))

    assert main(args) == 0
    plus_runs = list((out / "I").glob("qgn-plus-grid-plus-*/seed1"))
    assert len(plus_runs) == 1 and (plus_runs[0] / "final_metrics.json").is_file()
    assert (out / "full" / "seed1" / "final_metrics.json").is_file()
    saved = yaml.safe_load((plus_runs[0] / "config.yaml").read_text())
    assert saved["model"]["num_queries"] == 6 and saved["train"]["layer_decay"] == 0.8
    assert saved["train"]["epochs"] == 2 and saved["train"]["seed"] == 1  # --set reached the plus row
    assert saved["data"]["path"] == str(base["data"]["path"]) and saved["data"]["tokenizer"] == "words"
    full_saved = yaml.safe_load((out / "full" / "seed1" / "config.yaml").read_text())
    assert full_saved["model"]["num_queries"] == 8 and full_saved["train"]["layer_decay"] == 1.0

    label = f"QGN+ ({plus_file.stem}, not the paper's)"
    full_f1 = json.loads((out / "full" / "seed1" / "final_metrics.json").read_text())["test"]["GMNER"]["f1"]

    def check(plus_f1: float) -> None:
        tables = json.loads((out / "tables.json").read_text())
        qgn, plus_row = tables["tables"]["I"]["rows"]
        assert qgn["row"] == "QGN" and qgn["switches"] == {} and qgn["paper"]["GMNER F1"] == 61.18
        assert plus_row["row"] == label and plus_row["paper"] is None and plus_row["runs_finished"] == 1
        assert plus_row["switches"] == {"num_queries": 6, "train.layer_decay": 0.8}
        assert plus_row["ours"]["GMNER F1"]["values"] == [plus_f1] and qgn["ours"]["GMNER F1"]["values"] == [full_f1]
        assert tables["plus"] == {"name": "grid_plus", "switches": plus_row["switches"]}
        md = (out / "tables.md").read_text()
        assert f"| column | ours QGN | ours {label} | paper (QGN) |\n|---|---|---|---|\n" in md
        assert f"| GMNER F1 | {full_f1:.2f} ± 0.00 (n=1) | {plus_f1:.2f} ± 0.00 (n=1) | 61.18 |" in md
        assert "num_queries=6, train.layer_decay=0.8" in md

    check(json.loads((plus_runs[0] / "final_metrics.json").read_text())["test"]["GMNER"]["f1"])
    # --aggregate-only rebuilds both rows from reproduce.json (here with a known figure for QGN+)
    metrics = {m: {"precision": 70.0, "recall": 80.0, "f1": 77.0} for m in ("GMNER", "MNER", "EEG")}
    (plus_runs[0] / "final_metrics.json").write_text(json.dumps({"test": metrics, "dev": metrics}))
    (out / "tables.md").unlink()
    (out / "tables.json").unlink()
    capsys.readouterr()
    assert main(["reproduce", "--aggregate-only", str(out)]) == 0
    check(77.0)
    assert f"ours {label}" in capsys.readouterr().out


def test_plus_without_table_i_adds_nothing(grid_config, tmp_path, capsys):
    out = tmp_path / "x"
    args = ["reproduce", "--config", str(grid_config), "--tables", "IV", "--seeds", "1", "--output-dir", str(out)]
    assert main([*args, "--plus", "twitter_gmner_plus", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "Table I is not among --tables IV: no QGN+ row" in text and "qgn-plus" not in text
    assert "plan: 4 runs for tables IV" in text


# ----------------------------------------------------------------------------- --rehearse
GMNER_V2 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "twitter-gmner" / "Twitter10000_v2.0"


def _rehearsal_config(tmp_path, data: Path, image_dir: Path | None, **train) -> Path:
    config = tmp_path / "rehearse.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "num_queries": 8},
                "data": {"path": str(data), "image_dir": str(image_dir) if image_dir else None, "tokenizer": "words"},
                "train": {"epochs": 3, "batch_size": 4, "lr": 1e-3, **train},
            }
        )
    )
    return config


def test_rehearsal_runs_every_row_under_two_processes_and_says_what_stands_in(tmp_path, capsys):
    """Table IV (its "L_pred only" row included) under two gloo processes: per row K steps, a
    checkpoint, a resume for one more step and a dev evaluation; then qgn predict and the ONNX
    export; placeholders for the missing images, counted; the projection marked as one."""
    from qgn.data.synthetic import generate_synthetic_benchmark

    bench = generate_synthetic_benchmark(tmp_path / "data", num_train=12, num_dev=8, num_test=8, seed=5)
    for name in sorted((bench / "images").iterdir())[:3]:  # three dev posts lose their image
        name.unlink()
    out = tmp_path / "grid"
    assert (
        main(
            [
                "reproduce",
                "--config",
                str(_rehearsal_config(tmp_path, bench, bench / "images")),
                "--tables",
                "IV",
                "--rehearse",
                "--steps",
                "2",
                "--processes",
                "2",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "!! REHEARSAL: gmner: 3 of the 24 posts used have no image" in text and "PLACEHOLDER" in text
    result = json.loads((out / "rehearsal" / "rehearsal.json").read_text())
    assert sorted(result["rows"]) == ["gmner/full", "gmner/l-pred", "gmner/l-pred-l-con", "gmner/l-pred-l-nt"]
    for key, row in result["rows"].items():
        assert row["steps"] == 3 and len(row["losses"]) == 3 and row["processes"] == 2, key
        assert all(0 < loss < 1e4 for loss in row["losses"]), key
        assert row["flops_per_step"] > 0 and row["seconds_per_step"] > 0 and row["peak_memory_bytes"] > 2**20, key
    table = (out / "rehearsal" / "rehearsal.md").read_text()
    assert table.count("| ok |") == 6 and "FAILED" not in table  # 4 rows, qgn predict, the export
    assert "| gmner/l-pred | 3 |" in table and "| qgn predict (gmner-full) |" in table
    assert "PROJECTION (not a measurement)" in table and "H100 SXM" in table and "H200 SXM" in table
    assert len((out / "rehearsal" / "predictions.jsonl").read_text().splitlines()) == 8
    # the checkpoints are gone but the one best/ that predict and the export used
    assert [p.parent.name for p in (out / "rehearsal").glob("*/best")] == ["gmner-full"]
    assert not list((out / "rehearsal").glob("*/checkpoint")) and not list((out / "rehearsal").glob("model.onnx*"))


def test_rehearsal_names_the_failed_rows_and_exits_non_zero(tmp_path, capsys):
    """Rows that cannot train (here: a NaN L_nt weight, in the two Table IV rows that keep L_nt) fail
    alone, one line each naming the row and its error; the other rows, predict and the export run
    (on the first row that finished, since the full model failed)."""
    from qgn.data.synthetic import generate_synthetic_benchmark

    bench = generate_synthetic_benchmark(tmp_path / "data", num_train=8, num_dev=8, num_test=8, seed=5)
    out = tmp_path / "grid"
    code = main(
        [
            "reproduce",
            "--config",
            str(_rehearsal_config(tmp_path, bench, bench / "images")),
            "--tables",
            "IV",
            "--set",
            "model.lambda_nt=.nan",
            "--rehearse",
            "--steps",
            "1",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("qgn reproduce --rehearse:")]
    assert len(errors) == 2, captured.err[-2000:]
    assert "row gmner/l-pred-l-nt failed: TrainingDiverged: non-finite loss" in errors[0]
    assert "row gmner/full failed: TrainingDiverged: non-finite loss" in errors[1]
    table = (out / "rehearsal" / "rehearsal.md").read_text()
    assert "| gmner/full | – | – | – | – | – |" in table and table.count("| ok |") == 4
    assert "| qgn export onnx (gmner-l-pred) |" in table


@pytest.mark.skipif(
    not (GMNER_V2 / "txt" / "train.txt").is_file(),
    reason=f"the shared Twitter-GMNER v2.0 text is not beside this checkout ({GMNER_V2})",
)
def test_rehearsal_on_the_real_twitter_gmner_text(tmp_path, capsys):
    """The real text and boxes, no images (all placeholders, of the xml's sizes), a small model."""
    out = tmp_path / "grid"
    assert (
        main(
            [
                "reproduce",
                "--config",
                str(_rehearsal_config(tmp_path, GMNER_V2, None)),
                "--tables",
                "I",
                "--rehearse",
                "--steps",
                "1",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    assert "!! REHEARSAL: gmner: 20 of the 20 posts used have no image" in capsys.readouterr().out
    result = json.loads((out / "rehearsal" / "rehearsal.json").read_text())
    assert result["counts"]["gmner"]["split_sizes"]["train"] > 6000  # the whole split was read (for the projection)
    assert result["rows"]["gmner/full"]["steps"] == 2
    first = json.loads((out / "rehearsal" / "data-gmner" / "train.jsonl").read_text().splitlines()[0])
    from PIL import Image

    with Image.open(out / "rehearsal" / "data-gmner" / first["image"]) as image:
        assert list(image.size) == first["image_size"]
