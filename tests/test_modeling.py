"""QGNModel on tiny random encoders (CPU): shapes, masks, gradients, ablations, checkpoints, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qgn.errors import QGNError
from qgn.modeling.configuration_qgn import QGNConfig, layer_schedule
from qgn.modeling.encoders import load_tokenizer, run_vision_tower
from qgn.modeling.layers import MASKED_LOGIT, pool_words, safe_padding_mask
from qgn.modeling.modeling_qgn import QGNModel, count_parameters

VOCAB = 120
C = 4  # entity types of QGNConfig.tiny()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny(**overrides) -> QGNConfig:
    return QGNConfig.tiny(vocab_size=VOCAB, **overrides)


def make_batch(config: QGNConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three posts: 6 words in 10 sub-words (full row), 5 words in 6 sub-words, 3 words."""
    g = torch.Generator().manual_seed(seed)
    owners = [[0, 0, 1, 2, 3, 3, 4, 5, 5, 5], [0, 1, 2, 3, 3, 4], [0, 1, 2]]
    seq, words = 12, 6
    input_ids = torch.zeros(3, seq, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    word_index = torch.full_like(input_ids, -1)
    word_mask = torch.zeros(3, words, dtype=torch.bool)
    for b, own in enumerate(owners):
        n = len(own) + 2
        input_ids[b, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        attention_mask[b, :n] = 1
        word_index[b, 1 : n - 1] = torch.tensor(own)
        word_mask[b, : max(own) + 1] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "word_index": word_index, "word_mask": word_mask}
    if not config.text_only:
        side = config.input_image_size
        batch["pixel_values"] = torch.randn(3, 3, side, side, generator=g)
    return batch


def make_targets() -> list[dict[str, torch.Tensor]]:
    def t(labels, starts, ends, boxes, has_box, entity):
        long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
        return {
            "labels": long(labels),
            "start": long(starts),
            "end": long(ends),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "has_box": torch.tensor(has_box, dtype=torch.bool),
            "entity_index": long(entity),
        }

    return [
        t(
            [0, 0, 2],
            [0, 0, 3],
            [1, 1, 4],
            [[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.3], [0, 0, 0, 0]],
            [True, True, False],
            [0, 0, 1],
        ),
        t([1], [2], [2], [[0.5, 0.5, 0.4, 0.4]], [True], [0]),
        t([], [], [], [], [], []),
    ]


def build(config: QGNConfig, seed: int = 0) -> QGNModel:
    torch.manual_seed(seed)
    return QGNModel(config)


def param_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def loss_of(model: QGNModel, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The criterion alone: a head the criterion ignored would get no gradient and fail the tests."""
    from qgn.modeling.criterion import SetCriterion

    total, _ = SetCriterion(model.config)(outputs, make_targets())
    return total


# ----------------------------------------------------------------------------- shapes and masks
def test_output_shapes_with_image():
    config = tiny()
    model = build(config).eval()
    out = model(**make_batch(config))
    nq = config.num_queries
    assert set(out) == {"type_logits", "start_logits", "end_logits", "word_mask", "pred_boxes", "notarget_logits"}
    assert out["type_logits"].shape == (3, nq, C + 1)
    assert out["start_logits"].shape == out["end_logits"].shape == (3, nq, 6)
    assert out["pred_boxes"].shape == (3, nq, 4) and out["notarget_logits"].shape == (3, nq, 2)
    assert out["word_mask"].dtype == torch.bool and out["word_mask"].shape == (3, 6)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert all(torch.isfinite(v.float()).all() for v in out.values() if torch.is_tensor(v))


def test_text_only_has_no_vision_and_no_box_heads():
    config = tiny(text_only=True)
    model = build(config)
    batch = make_batch(config)
    out = model(**batch)
    assert "pred_boxes" not in out and "notarget_logits" not in out
    assert out["type_logits"].shape == (3, config.num_queries, C + 1)
    names = param_names(model)
    for prefix in (
        "vision_encoder.",
        "hvla.",
        "vision_projection.",
        "heads.box_head.",
        "heads.notarget_head.",
        "mqd.mre.vision_layers.",
        "mqd.mre.vision_merge.",
        "mqd.vtf.vision_position",
        "mqd.vtf.modality",
    ):
        assert not any(n.startswith(prefix) for n in names), prefix
    # pixel values given to a text-only model are ignored
    pixels = torch.randn(3, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model(**batch)["type_logits"], model(**batch, pixel_values=pixels)["type_logits"])


def test_image_model_requires_pixels():
    config = tiny()
    batch = make_batch(config)
    del batch["pixel_values"]
    with pytest.raises(QGNError, match="pixel_values"):
        build(config)(**batch)


def test_span_logits_masked_outside_words():
    config = tiny()
    batch = make_batch(config)
    out = build(config)(**batch)
    for key in ("start_logits", "end_logits"):
        logits = out[key]
        masked = ~batch["word_mask"].unsqueeze(1).expand_as(logits)
        assert (logits[masked] == MASKED_LOGIT).all()
        assert (logits[~masked] > MASKED_LOGIT / 2).all()


@pytest.mark.parametrize("overrides", [{}, {"text_only": True}, {"use_mqd": False}])
def test_padding_does_not_change_a_post(overrides):
    """A post alone and the same post padded inside a batch give the same outputs (eval mode)."""
    config = tiny(**overrides)
    model = build(config).eval()
    batch = make_batch(config)
    with torch.no_grad():
        full = model(**batch)
        n, w = int(batch["attention_mask"][2].sum()), int(batch["word_mask"][2].sum())
        alone = {
            k: v[2:3, :n] if k in ("input_ids", "attention_mask", "word_index") else v[2:3] for k, v in batch.items()
        }
        alone["word_mask"] = batch["word_mask"][2:3, :w]
        single = model(**alone)
    for key in ("type_logits", "pred_boxes", "notarget_logits"):
        if key in single:
            torch.testing.assert_close(full[key][2:3], single[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full["start_logits"][2:3, :, :w], single["start_logits"], atol=1e-4, rtol=1e-4)


def test_pool_words_takes_max_over_subwords():
    sub = torch.tensor([[[9.0], [1.0], [3.0], [2.0], [7.0], [5.0]]])  # (1, 6, 1)
    word_index = torch.tensor([[-1, 0, 0, 1, -1, -1]])
    pooled = pool_words(sub, word_index, num_words=3)
    assert pooled.squeeze(-1).tolist() == [[3.0, 2.0, 0.0]]  # word 2 has no sub-word -> 0


def test_safe_padding_mask_never_masks_a_whole_row():
    padding = torch.tensor([[True, True], [False, True]])
    safe = safe_padding_mask(padding)
    assert safe.tolist() == [[False, True], [False, True]]


@pytest.mark.parametrize("cross", [False, True])
def test_attend_equals_the_multihead_attention_module(cross):
    # QGN's attention reads nn.MultiheadAttention's weights but runs batch-first (see attend):
    # the same outputs and gradients as calling the module, with and without a padding mask.
    from qgn.modeling.layers import attend

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    torch.nn.init.normal_(attn.in_proj_bias)
    x = torch.randn(3, 5, 16, requires_grad=True)
    kv = torch.randn(3, 7, 16) if cross else None
    padding = torch.zeros(3, 7 if cross else 5, dtype=torch.bool)
    padding[1, -2:] = True
    padding[2, 1:] = True
    for mask in (None, padding):
        ours = attend(attn, x, kv, mask)
        keys = x if kv is None else kv
        ref, _ = attn(x, keys, keys, key_padding_mask=mask, need_weights=False)
        assert torch.allclose(ours, ref, atol=1e-6)
        g_ours = torch.autograd.grad(ours.sum(), [x, attn.in_proj_weight])
        g_ref = torch.autograd.grad(ref.sum(), [x, attn.in_proj_weight])
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ours, g_ref))


def test_aux_outputs_only_in_training_and_only_when_asked():
    config = tiny()  # aux_loss is on in the tiny preset
    model = build(config).train()
    batch = make_batch(config)
    aux = model(**batch)["aux_outputs"]
    assert len(aux) == config.num_decoder_layers  # every decoder layer (MRE makes the final output)
    for layer in aux:
        assert layer["type_logits"].shape == (3, config.num_queries, C + 1)
        assert layer["pred_boxes"].shape == (3, config.num_queries, 4)
    assert "aux_outputs" not in model.eval()(**batch)
    assert "aux_outputs" not in build(tiny(aux_loss=False)).train()(**batch)
    without_mre = build(tiny(use_mre=False)).train()
    assert len(without_mre(**batch)["aux_outputs"]) == config.num_decoder_layers - 1


def test_post_without_words_stays_finite():
    config = tiny()
    batch = make_batch(config)
    batch["word_mask"][2] = False
    batch["word_index"][2] = -1
    out = build(config)(**batch)
    assert all(torch.isfinite(v.float()).all() for v in out.values() if torch.is_tensor(v))
    assert all(torch.isfinite(v.float()).all() for aux in out["aux_outputs"] for v in aux.values())


# ----------------------------------------------------------------------------- gradients and ablations
ABLATIONS = {
    "default": ({}, []),
    "no_mqa": ({"use_mqa": False}, ["mqa."]),
    "no_tqc": ({"use_tqc": False}, ["mqa.tqc."]),
    "no_jca": ({"use_jca": False}, ["mqa.jca."]),
    "no_hvla": ({"use_hvla": False}, ["hvla."]),
    "no_mqd": ({"use_mqd": False}, ["mqd."]),
    "no_vtf": ({"use_vtf": False}, ["mqd.vtf."]),
    "no_fde": ({"use_fde": False}, ["mqd.fde."]),
    "no_mre": ({"use_mre": False}, ["mqd.mre."]),
    "mqa_only": ({"use_hvla": False, "use_mqd": False}, ["hvla.", "mqd."]),
    "hvla_only": ({"use_mqa": False, "use_mqd": False}, ["mqa.", "mqd."]),
    "mqd_only": ({"use_mqa": False, "use_hvla": False}, ["mqa.", "hvla."]),
    "batch_shared": ({"query_init": "batch_shared"}, ["queries.embeddings"]),
    "mean_pooled": ({"query_init": "mean_pooled_text"}, ["queries.embeddings"]),
    "attention_pooled": ({"query_init": "attention_pooled_text"}, ["queries.embeddings"]),
    "queries_7": ({"num_queries": 7}, []),
    "text_only": ({"text_only": True}, ["vision_encoder.", "heads.box_head."]),
    "text_only_no_mqd": ({"text_only": True, "use_mqd": False}, ["mqd.", "vision_encoder."]),
    "text_only_no_mre_fde": ({"text_only": True, "use_mre": False, "use_fde": False}, ["mqd.mre.", "mqd.fde."]),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_removes_module_and_trains(name):
    overrides, absent = ABLATIONS[name]
    config = tiny(**overrides)
    model = build(config)
    names = param_names(model)
    for prefix in absent:
        assert not any(n.startswith(prefix) for n in names), f"{prefix} parameters still present"
    if not config.use_mqd:
        assert any(n.startswith("plain_decoder.") for n in names)
    batch = make_batch(config)
    out = model(**batch)
    assert out["type_logits"].shape == (3, config.num_queries, C + 1)
    first = loss_of(model, out)
    first.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # and it trains: a few steps on the batch lower the loss
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.step()
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_of(model, model(**batch))
        loss.backward()
        optimizer.step()
    assert loss_of(model, model(**batch)).item() < 0.9 * first.item()


def test_switches_that_leave_nothing_to_see_the_image_are_refused():
    with pytest.raises(QGNError, match="never see the image"):
        QGNModel(tiny(use_fde=False, use_mre=False))


def test_query_inits_have_their_own_parameters():
    expected = {
        "random": "queries.embeddings",
        "batch_shared": "queries.shared",
        "mean_pooled_text": "queries.offsets",
        "attention_pooled_text": "queries.probes",
    }
    for mode, name in expected.items():
        names = param_names(build(tiny(query_init=mode)))
        assert [n for n in names if n.startswith("queries.")][0] == name


def test_batch_shared_queries_differ_from_each_other():
    model = build(tiny(query_init="batch_shared"))
    queries = model.queries(torch.zeros(1, 4, 64), torch.zeros(1, 4, dtype=torch.bool))[0]
    assert torch.cdist(queries, queries).fill_diagonal_(1.0).min() > 1e-3


# Table VI rows: (extraction stride, extraction start, injection stride, injection start)
TABLE_VI = [
    (3, 1, 3, 2),
    (1, 1, 3, 2),
    (2, 1, 3, 2),
    (3, 2, 3, 2),
    (3, 3, 3, 2),
    (3, 1, 1, 2),
    (3, 1, 2, 2),
    (3, 1, 3, 1),
    (3, 1, 3, 3),
]


def test_table_vi_layer_schedules_build_on_12_layer_encoders():
    base = tiny()
    text_config = dict(base.text_config, num_hidden_layers=12)
    vision_config = dict(base.vision_config, num_hidden_layers=12)
    for ext_stride, ext_start, inj_stride, inj_start in TABLE_VI:
        extract = layer_schedule(ext_start, ext_stride)
        inject = layer_schedule(inj_start, inj_stride)
        # Table VI varies the BERT extraction (J) and ViT injection schedules; the ViT features are
        # read at the injection layers (V = {2, 5, 8, 11} follows the injection schedule, Sec. III-A).
        config = tiny(
            text_config=text_config,
            vision_config=vision_config,
            text_extract_layers=extract,
            vision_extract_layers=inject,
            vision_inject_layers=inject,
        )
        model = build(config)
        assert sorted(int(k) for k in model.hvla.injections) == inject
        assert len(model.hvla.layer_adapters) == len(extract)
        assert model.vision_projection.proj.in_features == 64 * len(inject)
        # ViT layers past the deepest one used are pruned
        assert len(model.vision_encoder.encoder.layers) == max(inject)
    out = model(**make_batch(config))
    assert out["pred_boxes"].shape == (3, config.num_queries, 4)


@pytest.mark.parametrize(
    "field,value", [("text_extract_layers", [1, 5]), ("vision_inject_layers", [9]), ("vision_extract_layers", [2, 7])]
)
def test_layer_indices_past_the_encoder_are_refused(field, value):
    with pytest.raises(QGNError, match=field):
        QGNModel(tiny(**{field: value}))


def test_image_size_must_match_vision_encoder():
    with pytest.raises(QGNError, match="image_size"):
        QGNModel(tiny(image_size=96, vision_config={"image_size": 64}))


def test_tiny_preset_merges_encoder_overrides_and_sizes_the_vit():
    config = tiny(image_size=96, vision_config={"patch_size": 16})
    assert config.vision_config["image_size"] == 96 and config.vision_config["patch_size"] == 16
    assert config.vision_config["hidden_size"] == 64  # the rest of the preset stays
    out = build(config)(**make_batch(config))
    assert out["pred_boxes"].shape == (3, config.num_queries, 4)


# ----------------------------------------------------------------------------- HVLA inside CLIP
def test_vision_tower_driven_layer_by_layer_matches_transformers():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    data = dict(tiny().vision_config)
    data.pop("model_type")
    clip = CLIPVisionModel(CLIPVisionConfig(**data)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
        ours = run_vision_tower(clip, pixels, [1, 3, 4])
    for layer, tokens in zip([1, 3, 4], ours):
        torch.testing.assert_close(tokens, reference[layer])
    assert ours[0].shape == (2, 65, 64)  # (64 / 8)^2 patches + class token


def test_text_injection_is_a_plain_residual_that_guides_vision_from_the_start():
    config = tiny()
    model = build(config).eval()
    batch = make_batch(config)
    other = dict(batch, input_ids=torch.randint(5, VOCAB, batch["input_ids"].shape))

    def text_of(b):
        hidden = model.text_encoder(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True
        ).hidden_states
        return model.hvla.fuse_text(hidden)

    def vision(b):
        inject = model.hvla.injector(text_of(b), b["attention_mask"] == 0)
        return run_vision_tower(model.vision_encoder, b["pixel_values"], [4], inject)[0]

    with torch.no_grad():
        # at initialisation already, other text gives other visual features (no gate to open)
        assert not torch.allclose(vision(batch), vision(other), atol=1e-4)
        # X + Attn(LN(X), F, F), unscaled
        block = model.hvla.injections["1"]
        tokens = torch.randn(3, 65, 64)
        fused, padding = text_of(batch), batch["attention_mask"] == 0
        attended, _ = block.attn(block.norm(tokens), fused, fused, key_padding_mask=padding)
        torch.testing.assert_close(block(tokens, fused, padding), tokens + attended)
    assert not any("gate" in name for name in param_names(model))


# ----------------------------------------------------------------------------- checkpoints
def test_save_and_load_round_trip(tmp_path):
    from transformers import AutoTokenizer

    from qgn.data.pipeline import ImageTransform
    from qgn.modeling.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(["Kevin", "Durant", "Paris"])
    # layer 4 of the ViT is unused here, so the rebuilt model must prune it the same way
    config = tiny(
        text_config=dict(tiny().text_config, vocab_size=len(tokenizer)),
        query_init="batch_shared",
        vision_inject_layers=[1, 2],
        vision_extract_layers=[2, 3],
    )
    model = build(config).eval()
    batch = make_batch(config)
    batch["input_ids"] = batch["input_ids"].clamp(max=len(tokenizer) - 1)
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer, image_processor=ImageTransform(64))
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"):
        assert (tmp_path / "ckpt" / name).is_file(), name
    loaded = QGNModel.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training and len(loaded.vision_encoder.encoder.layers) == 3
    assert loaded.config == model.config
    with torch.no_grad():
        expected, got = model(**batch), loaded(**batch)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "ckpt"))) == len(tokenizer)
    assert ImageTransform.load(tmp_path / "ckpt").image_size == 64


def test_box_refinement_starts_as_the_identity_and_reads_the_image_inside_the_box():
    from qgn.modeling.heads import BoxRefinement

    config = tiny(box_refine=True)
    model = build(config).eval()
    batch = make_batch(config)
    with torch.no_grad():
        refined = model(**batch)["pred_boxes"]
        refine, model.heads.box_refine = model.heads.box_refine, None
        plain = model(**batch)["pred_boxes"]
        model.heads.box_refine = refine
    torch.testing.assert_close(refined, plain)  # zero last layer: training starts from the head's boxes
    model.train()
    loss_of(model, model(**batch)).backward()
    assert refine.mlp.layers[-1].weight.grad.abs().sum() > 0

    # the correction depends on the image inside the box and nowhere else
    head = BoxRefinement(8, points=3)
    torch.nn.init.normal_(head.mlp.layers[-1].weight)
    queries = torch.randn(1, 2, 8)
    logits = torch.logit(torch.tensor([[[0.25, 0.25, 0.3, 0.3], [0.75, 0.75, 0.3, 0.3]]]))  # top-left, bottom-right
    vision = torch.randn(1, 1 + 8 * 8, 8)
    changed = vision.clone()
    changed[:, 1:].view(1, 8, 8, 8)[:, :4, :4] += 5.0  # the top-left quarter of the patch grid
    with torch.no_grad():
        before, after = head(queries, logits, vision), head(queries, logits, changed)
    assert not torch.allclose(before[0, 0], after[0, 0]) and torch.allclose(before[0, 1], after[0, 1])


def test_pixel_refinement_starts_as_the_identity_and_reads_the_pixels_around_the_box():
    from qgn.modeling.heads import PixelBoxRefinement

    config = tiny(box_refine_pixels=True)
    model = build(config).eval()
    batch = make_batch(config)
    with torch.no_grad():
        refined = model(**batch)["pred_boxes"]
        refine, model.heads.pixel_refine = model.heads.pixel_refine, None
        plain = model(**batch)["pred_boxes"]
        model.heads.pixel_refine = refine
    torch.testing.assert_close(refined, plain)  # zero last layer: training starts from the head's boxes
    model.train()
    loss_of(model, model(**batch)).backward()
    assert refine.mlp.layers[-1].weight.grad.abs().sum() > 0

    # the correction depends on the pixels in and just around the box (1.5 times it), nowhere else
    head = PixelBoxRefinement(8, points=4)
    torch.nn.init.normal_(head.mlp.layers[-1].weight)
    queries = torch.randn(1, 2, 8)
    logits = torch.logit(torch.tensor([[[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]]]))
    pixels = torch.cat([torch.randn(1, 3, 32, 32), torch.ones(1, 1, 32, 32)], dim=1)
    just_outside = pixels.clone()
    just_outside[:, :3, 10:12, 2:4] += 5.0  # left of the first box (x 0.15-0.35), inside its 1.5x context
    far = pixels.clone()
    far[:, :3, 30:, :2] += 5.0  # a corner neither box's context reaches
    with torch.no_grad():
        before, near, away = (
            head(queries, logits, pixels),
            head(queries, logits, just_outside),
            head(queries, logits, far),
        )
    assert not torch.allclose(before[0, 0], near[0, 0]) and torch.allclose(before[0, 1], near[0, 1])
    torch.testing.assert_close(before, away)


def _checkerboard(side: int) -> torch.Tensor:
    """(side, side) of +1 / -1 alternating: every 2 x 2 average of it is 0."""
    index = torch.arange(side)
    return ((index[:, None] + index[None, :]) % 2 * 2 - 1).float()


def test_a_larger_input_feeds_the_vit_its_averages_and_the_pixel_refinement_its_own_pixels():
    """pixel_refine_scale=2: a 128 px input; the ViT sees its 2 x 2 averages (the same as a 64 px
    model given the averaged image), and only the pixel refinement reads the finer pixels."""
    torch.manual_seed(0)
    fine = build(tiny(box_refine_pixels=True, pixel_refine_scale=2)).eval()
    coarse = build(tiny(box_refine_pixels=True)).eval()
    coarse.load_state_dict(fine.state_dict())  # the same parameters: the scale adds none
    assert fine.heads.pixel_refine.levels == 3 and coarse.heads.pixel_refine.levels == 1
    batch = make_batch(fine.config)
    assert batch["pixel_values"].shape[-1] == 128
    averaged = dict(batch, pixel_values=F.avg_pool2d(batch["pixel_values"], 2))
    with torch.no_grad():
        ours, theirs = fine(**batch), coarse(**averaged)
    for key in ("type_logits", "start_logits", "notarget_logits", "pred_boxes"):
        torch.testing.assert_close(ours[key], theirs[key])  # the refinement starts at no correction

    # A pattern that no 2 x 2 average sees: the ViT's tokens stay, the refinement's boxes move.
    torch.nn.init.normal_(fine.heads.pixel_refine.mlp.layers[-1].weight, std=0.5)
    with torch.no_grad():  # small boxes (2 % of the side), which the pyramid reads at the input's pixels
        fine.heads.box_head.layers[-1].weight[2:] = 0
        fine.heads.box_head.layers[-1].bias[2:] = -4.0
    patterned = dict(batch, pixel_values=batch["pixel_values"] + 3 * _checkerboard(128))
    seen = {}
    hook = fine.vision_projection.register_forward_hook(lambda _m, _i, out: seen.setdefault(len(seen), out))
    with torch.no_grad():
        before, after = fine(**batch)["pred_boxes"], fine(**patterned)["pred_boxes"]
    hook.remove()
    torch.testing.assert_close(seen[0], seen[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after, atol=1e-4)
    with pytest.raises(QGNError, match="128 x 128"):
        fine(**averaged)


def test_the_pixel_pyramid_reads_small_boxes_sharp_and_large_boxes_from_averages():
    from qgn.modeling.heads import PixelBoxRefinement

    head = PixelBoxRefinement(8, points=8, levels=3)
    tiny_box, large_box = [0.5, 0.5, 0.03, 0.03], [0.5, 0.5, 0.9, 0.9]
    logits = torch.logit(torch.tensor([[tiny_box, large_box]]))
    weights = head.level_weights(logits, 128)  # (3, 1, 2)
    torch.testing.assert_close(weights.sum(0), torch.ones(1, 2))
    assert weights[0, 0, 0] == 1  # 0.03 x 1.5 x 128 / 7 = 0.8 px between samples: the input itself
    assert weights[0, 0, 1] == 0 and weights[2, 0, 1] == 1  # 16 px apart: the coarsest level (4 px)
    torch.nn.init.normal_(head.mlp.layers[-1].weight)
    queries = torch.randn(1, 2, 8)
    pixels = torch.cat([torch.randn(1, 3, 128, 128), torch.ones(1, 1, 128, 128)], dim=1)
    patterned = pixels.clone()
    patterned[:, :3] += 3 * _checkerboard(128)  # gone in every level but the input's
    with torch.no_grad():
        plain, seen = head(queries, logits, pixels), head(queries, logits, patterned)
    assert not torch.allclose(plain[0, 0], seen[0, 0])  # the small box sees the pattern
    torch.testing.assert_close(plain[0, 1], seen[0, 1])  # the large one reads averages, not aliasing
    # the model builds the pyramid once per forward and hands it to every decoder layer's refinement
    levels = head.pyramid(pixels)
    assert [tuple(level.shape[-2:]) for level in levels] == [(128, 128), (64, 64), (32, 32)]
    with torch.no_grad():
        torch.testing.assert_close(head(queries, logits, levels), plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pyramid of 3 levels"):
        head(queries, logits, levels[:2])
    # its convolutions run channels-last: the same sums as in the plain layout
    crops = torch.randn(6, 4, 8, 8)
    with torch.no_grad():
        plain_layout = head.conv(crops)
        torch.testing.assert_close(head.conv(crops.contiguous(memory_format=torch.channels_last)), plain_layout)


def test_the_pixel_patch_branch_starts_at_the_vits_tokens_and_adds_the_finer_pixels():
    config = tiny(box_refine_pixels=True, pixel_refine_scale=2, pixel_patch_branch=True, pixel_patch_branch_width=4)
    torch.manual_seed(0)
    model = build(config).eval()
    assert [m.out_channels for m in model.pixel_branch.convs if isinstance(m, torch.nn.Conv2d)] == [4, 8, 16]
    batch = make_batch(config)
    with torch.no_grad():
        with_branch = model(**batch)
        branch, model.pixel_branch = model.pixel_branch, None
        without = model(**batch)
        model.pixel_branch = branch
    for key in ("type_logits", "start_logits", "notarget_logits", "pred_boxes"):
        torch.testing.assert_close(with_branch[key], without[key])  # the projection starts at zero
    model.train()
    loss_of(model, model(**batch)).backward()
    assert branch.proj.weight.grad.abs().sum() > 0
    # once trained, the tokens see a pattern that the ViT's 2 x 2 averages cannot
    torch.nn.init.normal_(branch.proj.weight, std=0.5)
    seen = {}
    hook = model.mqd.register_forward_pre_hook(lambda _m, args: seen.__setitem__(len(seen), args[1]))  # F~_v
    patterned = dict(batch, pixel_values=batch["pixel_values"] + 3 * _checkerboard(128))
    with torch.no_grad():
        model.eval()(**batch), model(**patterned)
    hook.remove()
    assert not torch.allclose(seen[0], seen[1], atol=1e-4)


@pytest.mark.parametrize("pool", ["mean", "max", "mean_max"])
def test_the_pixel_patch_branch_pools_each_patch_as_asked(pool):
    from qgn.modeling.hvla import PixelPatchBranch

    torch.manual_seed(0)
    branch = PixelPatchBranch(8, width=2, pool=pool)
    assert branch.proj.in_features == (16 if pool == "mean_max" else 8)
    pixels = torch.randn(2, 4, 32, 32)
    assert branch(pixels, 2).abs().sum() == 0  # the projection starts at zero
    torch.nn.init.normal_(branch.proj.weight)
    with torch.no_grad():
        maps = branch.convs(pixels)  # (2, 8, 4, 4), pooled to the 2 x 2 grid
        mean, peak = F.adaptive_avg_pool2d(maps, 2), F.adaptive_max_pool2d(maps, 2)
        expected = {"mean": mean, "max": peak, "mean_max": torch.cat([mean, peak], dim=1)}[pool]
        torch.testing.assert_close(branch(pixels, 2), branch.proj(expected.flatten(2).transpose(1, 2)))
    with pytest.raises(ValueError, match="pool must be one of"):
        PixelPatchBranch(8, pool="sum")


def test_the_pixel_pyramid_is_built_once_for_every_decoder_layer_with_aux_loss():
    config = tiny(box_refine_pixels=True, pixel_refine_scale=2, aux_loss=True)
    model = build(config).train()
    refine, built = model.heads.pixel_refine, []
    pyramid = refine.pyramid
    refine.pyramid = lambda pixels: built.append(pixels.shape) or pyramid(pixels)
    outputs = model(**make_batch(config))
    assert len(built) == 1 and outputs["aux_outputs"]  # one pyramid, read by every layer's heads
    loss_of(model, outputs).backward()
    assert all(torch.isfinite(aux["pred_boxes"]).all() for aux in outputs["aux_outputs"])
    assert refine.mlp.layers[-1].weight.grad.abs().sum() > 0


def test_a_config_saved_before_the_pool_switch_loads_as_the_mean_branch(tmp_path):
    saved = tiny(box_refine_pixels=True, pixel_refine_scale=2, pixel_patch_branch=True).to_dict()
    del saved["pixel_patch_branch_pool"]  # a checkpoint's config.json from before the switch
    old = QGNConfig.from_dict(saved)
    assert old.pixel_patch_branch_pool == "mean"
    assert build(old).pixel_branch.proj.in_features == 4 * old.pixel_patch_branch_width


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pixel_refine_scale": 2}, "needs box_refine_pixels"),
        ({"box_refine_pixels": True, "pixel_refine_scale": 0}, "pixel_refine_scale must be >= 1"),
        ({"box_refine_pixels": True, "pixel_refine_scale": 2, "text_only": True}, "needs box_refine_pixels"),
        ({"pixel_patch_branch": True, "text_only": True}, "pixel_patch_branch reads the image"),
        ({"pixel_patch_branch": True, "pixel_patch_branch_width": 0}, "pixel_patch_branch_width must be >= 1"),
        ({"pixel_patch_branch": True, "pixel_patch_branch_pool": "sum"}, "pixel_patch_branch_pool must be one of"),
    ],
)
def test_pixel_refinement_switches_need_what_they_feed(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_from_pretrained_on_a_non_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(QGNError, match="config.json"):
        QGNModel.from_pretrained(tmp_path)


def test_count_parameters():
    model = build(tiny())
    counts = count_parameters(model)
    assert counts["total"] == sum(counts["per_module"].values()) == sum(p.numel() for p in model.parameters())
    assert counts["trainable"] == counts["total"]
    model.text_encoder.requires_grad_(False)
    frozen = count_parameters(model)
    assert frozen["trainable"] == counts["total"] - counts["per_module"]["text_encoder"]


# ----------------------------------------------------------------------------- encoder loading
def test_encoders_load_from_local_directories_and_fill_the_config(tmp_path):
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel

    base = tiny()
    bert = BertModel(BertConfig(**base.text_config))
    bert.save_pretrained(tmp_path / "bert")
    vision = dict(base.vision_config)
    vision.pop("model_type")
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision))  # a *full* CLIP folder
    clip.save_pretrained(tmp_path / "clip")
    config = tiny(
        text_config=None, vision_config=None, text_encoder=str(tmp_path / "bert"), vision_encoder=str(tmp_path / "clip")
    )
    model = QGNModel(config)
    assert config.text_config["hidden_size"] == 64 and config.vision_config["model_type"] == "clip_vision_model"
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(
        model.vision_encoder.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight
    )
    assert model(**make_batch(config))["pred_boxes"].shape == (3, config.num_queries, 4)


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"text_config": None, "text_encoder": "qgn-tests/not-a-cached-bert"}, "text_encoder"),
        ({"vision_config": None, "vision_encoder": "qgn-tests/not-a-cached-clip"}, "vision_encoder"),
    ],
)
def test_hub_names_fail_fast_offline(monkeypatch, overrides, field):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QGNError, match=rf"could not load .*HF_HUB_OFFLINE.*pass {field}=/path/to/dir"):
        QGNModel(tiny(**overrides))


def test_unreachable_hub_fails_fast(monkeypatch):
    import qgn.modeling.encoders as encoders

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(encoders, "hub_offline", lambda: False)
    monkeypatch.setattr(encoders, "_hub_reachable", lambda: False)
    with pytest.raises(QGNError, match="unreachable.*text_encoder=/path/to/dir"):
        QGNModel(tiny(text_config=None, text_encoder="qgn-tests/not-a-cached-bert"))
    with pytest.raises(QGNError, match="unreachable"):
        load_tokenizer("qgn-tests/not-a-cached-bert")


def test_missing_local_directory_is_named():
    with pytest.raises(QGNError, match="does not exist"):
        QGNModel(tiny(text_config=None, text_encoder="./no/such/bert"))


# ----------------------------------------------------------------------------- with the real pipeline
@pytest.mark.parametrize("text_only", [False, True])
def test_pipeline_batch_through_model_and_criterion(tmp_path, text_only):
    from PIL import Image

    from qgn.data.pipeline import GMNERDataset, make_collate, model_inputs
    from qgn.data.records import Entity, Post
    from qgn.modeling.criterion import SetCriterion
    from qgn.modeling.tokenizer import build_word_tokenizer

    image = tmp_path / "a.jpg"
    Image.new("RGB", (120, 80), (200, 30, 30)).save(image)
    posts = [
        Post(
            "a",
            ["Kevin", "Durant", "visits", "Paris", "today"],
            [Entity(0, 2, "PER", [(10, 10, 60, 70)]), Entity(3, 4, "LOC")],
            str(image),
            (120, 80),
        ),
        Post("b", ["RT", "@NBA"], [Entity(1, 2, "ORG", [(0, 0, 30, 30), (40, 40, 80, 80)])], str(image), (120, 80)),
    ]
    tokenizer = build_word_tokenizer(["Kevin", "Paris"])
    config = tiny(text_config=dict(tiny().text_config, vocab_size=len(tokenizer)), text_only=text_only)
    model = build(config)
    batch = make_collate(tokenizer.pad_token_id)([item for item in GMNERDataset(posts, tokenizer, config)])
    out = model(**model_inputs(batch))
    assert out["start_logits"].shape == (2, config.num_queries, 5)
    assert ("pred_boxes" in out) != text_only
    total, parts = SetCriterion(config)(out, batch["targets"])
    total.backward()
    assert torch.isfinite(total) and "loss_boundary" in parts
    assert model.heads.start_head.query_proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- alignment switches
def test_alignment_heads_exist_only_when_switched_on_and_feed_training_outputs():
    assert build(tiny()).alignment is None and build(tiny()).word_alignment is None
    config = tiny(lambda_align=1.0, lambda_align_words=0.5)
    model = build(config).train()
    out = model(**make_batch(config))
    grid = (64 // 8) ** 2
    assert out["align_logits"].shape == (3, config.num_queries + 1, grid + 1)
    assert out["align_word_logits"].shape == (3, 6 + 1, grid + 1)
    assert all("align_logits" in aux for aux in out["aux_outputs"])
    model.eval()
    assert "align_logits" not in model(**make_batch(config))  # training only, without presence / prior
    with pytest.raises(ValueError, match="lambda_align"):
        tiny(align_presence=True)


def test_presence_and_box_prior_read_the_alignment():
    config = tiny(lambda_align=1.0, align_presence=True, align_box_prior=True)
    model = build(config).eval()
    seen = {}
    model.heads.notarget_head.register_forward_hook(lambda m, args, out: seen.update(notarget=out.clone()))
    model.heads.box_head.register_forward_hook(lambda m, args, out: seen.update(box=out.clone()))
    model.alignment.register_forward_hook(lambda m, args, out: seen.update(align=out.clone()))
    with torch.no_grad():
        out = model(**make_batch(config))
    align = seen["align"]
    # presence: has-target logit + logsumexp over the patches, no-target logit + the "no patch" score
    evidence = torch.stack([align[:, :-1, :-1].logsumexp(-1), align[:, :-1, -1]], dim=-1)
    torch.testing.assert_close(out["notarget_logits"], seen["notarget"] + evidence)
    # box prior: the centre is an offset, in logit space, from the softmax-expected patch centre
    weights = align[:, :-1, :-1].softmax(-1).view(3, config.num_queries, 8, 8)
    centres = (torch.arange(8) + 0.5) / 8
    reference = torch.stack([(weights * centres).sum((-1, -2)), (weights * centres[:, None]).sum((-1, -2))], -1)
    centre = torch.sigmoid(seen["box"][..., :2] + torch.logit(reference))
    torch.testing.assert_close(out["pred_boxes"][..., :2], centre)
    torch.testing.assert_close(out["pred_boxes"][..., 2:], seen["box"][..., 2:].sigmoid())
