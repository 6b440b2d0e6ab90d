"""Every setting is checked before any work: a wrong type or value is one line naming the setting
and what it takes (``--set model.dropout=2`` was a 35-line traceback, ``model.use_hvla=maybe``
trained)."""

from __future__ import annotations

import dataclasses

import pytest

from qgn.cli import main
from qgn.engine.settings import resolve_settings, settings_from_dict
from qgn.errors import QGNError
from qgn.modeling import QGNConfig


@pytest.mark.parametrize(
    "setting, message",
    [
        ("model.dropout=2", "model.dropout must be in [0, 1) (a probability), got 2"),
        ("model.dropout=-0.5", "model.dropout must be in [0, 1)"),
        ("model.use_hvla=maybe", "model.use_hvla must be true or false, got 'maybe'"),
        ("model.num_queries=3.5", "model.num_queries must be an integer, got 3.5"),
        ("model.num_queries=abc", "model.num_queries must be an integer, got 'abc'"),
        ("model.num_queries=0", "model.num_queries must be >= 1, got 0"),
        ("model.entity_types=PER", "model.entity_types must be a list of strings, got 'PER'"),
        ("model.entity_types=[PER, 3]", "model.entity_types must be a list of strings, got ['PER', 3]"),
        ("model.text_extract_layers=[1, x]", "model.text_extract_layers must be a list of integers"),
        ("model.text_config=3", "model.text_config must be a mapping (e.g. {key: value}) or null, got 3"),
        ("model.notarget_unmatched_weight=heavy", "model.notarget_unmatched_weight must be a number or null"),
        ("model.num_attention_heads=0", "model.num_attention_heads must be >= 1, got 0"),
        ("model.score_threshold=1.5", "model.score_threshold must be in [0, 1]"),
        ("model.cost_l1=-1", "model.cost_l1 must be >= 0 (a weight)"),
        ("model.query_init=best", "model.query_init must be one of"),
        ("model.hidden_size=true", "model.hidden_size must be an integer, got True"),
        ("train.epochs=abc", "train.epochs must be an integer, got 'abc'"),
        ("data.cache_images=sometimes", "data.cache_images must be true or false"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_what_it_takes(setting, message):
    with pytest.raises(QGNError) as err:
        resolve_settings("demo", [setting])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_values_are_taken_and_integral_floats_become_ints():
    settings = resolve_settings(
        "demo",
        [
            "model.num_queries=12.0",
            "model.dropout=0.2",
            "model.use_hvla=false",
            "model.entity_types=[PER, ORG]",
            "model.notarget_unmatched_weight=null",
            "model.score_threshold=1",
        ],
    )
    model = settings.model
    assert model.num_queries == 12 and isinstance(model.num_queries, int)
    assert (model.dropout, model.use_hvla, model.entity_types) == (0.2, False, ["PER", "ORG"])
    assert model.notarget_unmatched_weight is None and model.score_threshold == 1.0


def test_every_model_field_is_type_checked():
    # Driven by the dataclass annotations, so a field added later is covered without a list to keep.
    for f in dataclasses.fields(QGNConfig):
        wrong = [] if f.type in ("str", "bool") or "int" in f.type or "float" in f.type else "text"
        if f.type.startswith(("dict", "list")):
            wrong = 7
        with pytest.raises(QGNError, match=f"model.{f.name} must be"):
            settings_from_dict({"model": {"preset": "tiny", f.name: wrong}})


def test_the_cli_says_it_in_one_line_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "demo", "--set", "model.dropout=2", "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "qgn train: error: model.dropout must be in [0, 1) (a probability), got 2.0"
    assert not run.exists()


def test_entity_types_as_a_string_is_refused_by_the_config_itself():
    with pytest.raises(ValueError, match="entity_types must be a list of type names"):
        QGNConfig.tiny(entity_types="PER")
