"""The parts of the benchmark scripts that decide a reported figure: the BIO tagger's labels and
decoding (its MNER F1 is the bar QGN is compared with), speed.py's ``--set`` parsing, and a CPU
smoke run of gpu.py."""

from __future__ import annotations

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

    (input_ids, target, first), = mner_text_only.encode_tagger([post], tokenizer, max_length=64)

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
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--allow-cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["smoke_cpu"] is True
    for key in ("train_bf16", "inference_bf16", "encoders_inference_bf16"):
        assert figures[key]["posts_per_s"] > 0
    assert figures["image_loading"]["images_per_s"] > 0
    assert figures["projection"]["total_hours_compute"] > 0
