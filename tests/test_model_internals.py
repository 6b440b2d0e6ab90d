"""What each QGN module computes, on hand-made inputs or against a re-implementation of its
docstring's formula written here (not copied from the code): a dropped residual, a moved
LayerNorm or mask, swapped operands or an embedding added to the wrong modality fail these.

Every module runs in eval mode with dropout 0; random weights are fine where the reference uses
the same parameters through its own formula.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qgn.modeling import box_ops
from qgn.modeling.heads import AlignmentHead, BoxRefinement, PredictionHeads, SpanHead
from qgn.modeling.hvla import HierarchicalAlignment, TextInjection, VisualProjection
from qgn.modeling.layers import (
    MASKED_LOGIT,
    AttentionBlock,
    DecoderLayer,
    EncoderLayer,
    FeedForwardBlock,
    attend,
    pool_words,
    safe_padding_mask,
    sine_position_2d,
)
from qgn.modeling.mqa import MultiViewQueryAttention, QueryInitializer
from qgn.modeling.mqd import MultimodalQueryDecoding, MultimodalRefinement, VisionTextFusion, _memory

D, HEADS = 8, 2


def _config(**overrides):
    values = dict(
        hidden_size=D,
        num_attention_heads=HEADS,
        ffn_dim=16,
        dropout=0.0,
        max_text_length=12,
        num_fusion_layers=1,
        num_decoder_layers=1,
        num_refinement_layers=2,
        use_vtf=True,
        use_fde=True,
        use_mre=True,
        use_tqc=True,
        use_jca=True,
        num_queries=3,
        query_init="random",
        text_extract_layers=[1, 3],
        vision_inject_layers=[2],
        num_labels=3,
        text_only=False,
        box_refine=False,
        box_refine_pixels=False,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module: nn.Module) -> nn.Module:
    """Random weights *and* biases (zero biases would hide a bias used in the wrong place)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module.eval()


# ---------------------------------------------------------------- references from the formulas


def ref_mha(attn: nn.MultiheadAttention, query, kv=None, key_padding=None):
    """softmax(Q K^T / sqrt(dh) masked) V per head, concatenated, then the output projection."""
    kv = query if kv is None else kv
    dim, heads = attn.embed_dim, attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(dim)
    bq, bk, bv = attn.in_proj_bias.split(dim)
    q, k, v = query @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
    dh = dim // heads
    outs = []
    for h in range(heads):
        part = slice(h * dh, (h + 1) * dh)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(dh)
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, :], float("-inf"))
        outs.append(scores.softmax(-1) @ v[..., part])
    return torch.cat(outs, -1) @ attn.out_proj.weight.T + attn.out_proj.bias


def ref_ln(norm: nn.LayerNorm, x):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def ref_block(block: AttentionBlock, x, kv=None, kv_padding=None):
    """LN(x + MHA(x, kv, kv)), an all-padding row keeping its first key."""
    if kv_padding is not None:
        kv_padding = kv_padding.clone()
        kv_padding[kv_padding.all(1), 0] = False
    return ref_ln(block.norm, x + ref_mha(block.attn, x, kv, kv_padding))


def ref_ffn(block: FeedForwardBlock, x):
    first, second = block.net[0], block.net[3]
    return ref_ln(block.norm, x + nn.functional.gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias)


def ref_encoder(layer: EncoderLayer, x, padding=None):
    return ref_ffn(layer.ffn, ref_block(layer.self_attn, x, None, padding))


def ref_decoder(layer: DecoderLayer, x, memory, memory_padding=None, padding=None):
    x = ref_block(layer.self_attn, x, None, padding)
    x = ref_block(layer.cross_attn, x, memory, memory_padding)
    return ref_ffn(layer.ffn, x)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol)


# ---------------------------------------------------------------- layers


def test_attend_by_hand_with_identity_projections_and_a_padded_key():
    attn = nn.MultiheadAttention(2, 1, batch_first=True).eval()
    with torch.no_grad():
        attn.in_proj_weight.copy_(torch.cat([torch.eye(2)] * 3))
        attn.in_proj_bias.zero_()
        attn.out_proj.weight.copy_(torch.eye(2))
        attn.out_proj.bias.zero_()
    query = torch.tensor([[[1.0, 0.0]]])
    kv = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [50.0, 50.0]]])
    padding = torch.tensor([[False, False, True]])
    # scores q.k / sqrt(2): 2/sqrt2 and 0 (the third key is padding); out = weights @ v
    w = torch.tensor([math.exp(2 / math.sqrt(2)), 1.0])
    w = w / w.sum()
    expected = w[0] * kv[0, 0] + w[1] * kv[0, 1]
    close(attend(attn, query, kv, padding)[0, 0], expected)
    # self-attention of kv: each key attends to the (unpadded) keys
    close(attend(attn, kv, None, padding), ref_mha(attn, kv, None, padding))


@pytest.mark.parametrize("cross", [False, True])
def test_attention_block_is_post_ln_residual_with_its_padding(cross):
    block = _randomize(AttentionBlock(D, HEADS, 0.0))
    x = torch.randn(2, 3, D)
    kv = torch.randn(2, 4, D) if cross else None
    padding = torch.tensor([[False, True, False, True], [True, True, True, True]])
    if not cross:
        padding = padding[:, :3]
    close(block(x, kv, padding), ref_block(block, x, kv, padding))
    # a padded key changes nothing
    if cross:
        kv2 = kv.clone()
        kv2[0, 1] += 100
        close(block(x, kv2, padding)[0], block(x, kv, padding)[0])


def test_feed_forward_encoder_and_decoder_layers_follow_their_formulas():
    ffn = _randomize(FeedForwardBlock(D, 16, 0.0))
    x = torch.randn(2, 3, D)
    close(ffn(x), ref_ffn(ffn, x))
    enc = _randomize(EncoderLayer(D, HEADS, 16, 0.0))
    padding = torch.tensor([[False, False, True], [False, True, True]])
    close(enc(x, padding), ref_encoder(enc, x, padding))
    dec = _randomize(DecoderLayer(D, HEADS, 16, 0.0))
    memory = torch.randn(2, 4, D)
    memory_padding = torch.tensor([[False, True, False, False], [False, False, False, True]])
    close(dec(x, memory, memory_padding, padding), ref_decoder(dec, x, memory, memory_padding, padding))


def test_safe_padding_mask_unmasks_only_the_first_key_of_full_rows():
    padding = torch.tensor([[True, True, True], [False, True, True], [True, False, True]])
    expected = torch.tensor([[False, True, True], [False, True, True], [True, False, True]])
    assert torch.equal(safe_padding_mask(padding), expected)


def test_pool_words_max_over_own_subwords_without_specials_or_padding():
    # [CLS] w0a w0b w1 w2 [SEP] [PAD]; specials and padding hold huge values that must not leak
    subwords = torch.tensor(
        [[[99.0, 99.0], [1.0, 5.0], [3.0, 2.0], [-4.0, -7.0], [9.0, 9.0], [99.0, 99.0], [99.0, 99.0]]]
    )
    word_index = torch.tensor([[-1, 0, 0, 1, 5, -1, -1]])  # 5 is past num_words: ignored
    pooled = pool_words(subwords, word_index, 3)
    assert torch.equal(pooled, torch.tensor([[[3.0, 5.0], [-4.0, -7.0], [0.0, 0.0]]]))


def test_sine_position_2d_by_hand_on_a_2x2_grid():
    table = sine_position_2d(5, 8)
    freq = [1.0, 10000**-0.5]
    coords = [0.5 / 2 * 2 * math.pi, 1.5 / 2 * 2 * math.pi]

    def axis(c):
        return [math.sin(c * f) for f in freq] + [math.cos(c * f) for f in freq]

    expected = [[0.0] * 8] + [axis(coords[r]) + axis(coords[c]) for r in range(2) for c in range(2)]
    close(table, torch.tensor(expected))


# ---------------------------------------------------------------- HVLA


def test_text_injection_is_residual_over_normed_tokens_with_text_padding_masked():
    block = _randomize(TextInjection(D, HEADS, 0.0))
    tokens, fused = torch.randn(2, 5, D), torch.randn(2, 4, D)
    padding = torch.tensor([[False, False, True, True], [False, True, False, True]])
    expected = tokens + ref_mha(block.attn, ref_ln(block.norm, tokens), fused, padding)
    close(block(tokens, fused, padding), expected)
    moved = fused.clone()
    moved[padding] += 100.0
    close(block(tokens, moved, padding), expected)


def test_hvla_injector_masks_the_text_padding_and_only_injects_at_its_layers():
    hvla = _randomize(HierarchicalAlignment(_config(), D, D, HEADS))
    fused, tokens = torch.randn(1, 3, D), torch.randn(1, 5, D)
    padding = torch.tensor([[False, True, True]])
    after = hvla.injector(fused, padding)
    assert torch.equal(after(1, tokens), tokens)
    moved = fused.clone()
    moved[0, 1:] -= 50.0
    close(after(2, tokens), hvla.injector(moved, padding)(2, tokens))
    close(
        after(2, tokens),
        tokens + ref_mha(hvla.injections["2"].attn, ref_ln(hvla.injections["2"].norm, tokens), fused, padding),
    )


def test_fuse_text_is_eq3_in_layer_order():
    hvla = _randomize(HierarchicalAlignment(_config(), D, D, HEADS))
    hidden = [torch.randn(2, 3, D) for _ in range(5)]  # embeddings, layers 1..4
    adapted = [hidden[j] + hidden[j] @ a.weight.T + a.bias for j, a in zip((1, 3), hvla.layer_adapters)]
    expected = ref_ln(hvla.fused_norm, torch.cat(adapted, -1) @ hvla.merge.weight.T + hvla.merge.bias)
    close(hvla.fuse_text(hidden), expected)


def test_visual_projection_is_ln_of_the_projected_concatenation():
    proj = _randomize(VisualProjection(D, 2, D))
    a, b = torch.randn(1, 5, D), torch.randn(1, 5, D)
    close(proj([a, b]), ref_ln(proj.norm, torch.cat([a, b], -1) @ proj.proj.weight.T + proj.proj.bias))


# ---------------------------------------------------------------- MQA


def test_tqc_then_jca_over_text_then_queries():
    config = _config()
    mqa = _randomize(MultiViewQueryAttention(config))
    queries, text = torch.randn(2, 3, D), torch.randn(2, 4, D)
    padding = torch.tensor([[False, False, True, True], [False, False, False, True]])
    q = ref_block(mqa.tqc, queries, text, padding)
    joint = ref_encoder(mqa.jca, torch.cat([text, q], 1), torch.cat([padding, torch.zeros(2, 3, dtype=torch.bool)], 1))
    out_q, out_t = mqa(queries, text, padding)
    close(out_q, joint[:, 4:])
    close(out_t, joint[:, :4])


def test_query_initializers_by_hand():
    text = torch.tensor([[[1.0] * D, [3.0] * D, [100.0] * D]])
    padding = torch.tensor([[False, False, True]])
    random = QueryInitializer(_config(query_init="random"))
    assert torch.equal(random(text, padding)[0], random.embeddings)
    shared = QueryInitializer(_config(query_init="batch_shared"))
    codes = torch.tensor(
        [
            [
                math.sin(p / 10000 ** (2 * (i // 2) / D)) if i % 2 == 0 else math.cos(p / 10000 ** (2 * (i // 2) / D))
                for i in range(D)
            ]
            for p in range(3)
        ]
    )
    close(shared(text, padding)[0], shared.shared + codes)
    mean = QueryInitializer(_config(query_init="mean_pooled_text"))
    close(mean(text, padding)[0], 2.0 + mean.offsets)  # mean of 1 and 3, the padding left out
    pooled = _randomize(QueryInitializer(_config(query_init="attention_pooled_text")))
    scores = pooled.probes @ (text[0] @ pooled.key.weight.T + pooled.key.bias).T / math.sqrt(D)
    weights = scores[:, :2].softmax(-1)
    close(pooled(text, padding)[0], weights @ text[0, :2])


# ---------------------------------------------------------------- MQD


def test_vtf_adds_each_embedding_to_its_own_modality():
    vtf = _randomize(VisionTextFusion(_config(num_fusion_layers=0), 5))
    vision, text = torch.randn(1, 5, D), torch.randn(1, 3, D)
    memory = vtf(vision, text, torch.zeros(1, 3, dtype=torch.bool))
    close(memory[:, :5], vision + vtf.vision_position + sine_position_2d(5, D) + vtf.modality[0])
    close(memory[:, 5:], text + vtf.text_position[:3] + vtf.modality[1])
    text_only = _randomize(VisionTextFusion(_config(num_fusion_layers=0), None))
    close(text_only(None, text, torch.zeros(1, 3, dtype=torch.bool)), text + text_only.text_position[:3])


def test_vtf_layers_mask_vision_and_text_padding():
    vtf = _randomize(VisionTextFusion(_config(num_fusion_layers=1), 5))
    vision, text = torch.randn(1, 5, D), torch.randn(1, 3, D)
    text_padding, vision_padding = (
        torch.tensor([[False, False, True]]),
        torch.tensor([[False, False, True, True, False]]),
    )
    embedded = torch.cat(
        [
            vision + vtf.vision_position + vtf.vision_grid + vtf.modality[0],
            text + vtf.text_position[:3] + vtf.modality[1],
        ],
        1,
    )
    expected = ref_encoder(vtf.layers[0], embedded, torch.cat([vision_padding, text_padding], 1))
    close(vtf(vision, text, text_padding, vision_padding), expected)


def test_memory_is_vision_then_text_with_their_padding():
    vision, text = torch.randn(1, 2, D), torch.randn(1, 3, D)
    text_padding = torch.tensor([[False, True, True]])
    memory, padding = _memory(vision, text, text_padding)
    assert torch.equal(memory, torch.cat([vision, text], 1))
    assert padding.tolist() == [[False, False, False, True, True]]
    _, padding = _memory(vision, text, text_padding, torch.tensor([[True, False]]))
    assert padding.tolist() == [[True, False, False, True, True]]
    assert _memory(None, text, text_padding)[0] is text


def test_mre_joint_layers_synchronized_vision_layers_and_final_merge():
    mre = _randomize(MultimodalRefinement(_config(num_refinement_layers=2), True))
    queries, words, vision = torch.randn(2, 3, D), torch.randn(2, 4, D), torch.randn(2, 5, D)
    word_mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    vision_padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    padding = torch.cat([~word_mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    w, q, v = words, queries, vision
    for k in range(2):
        joint = ref_encoder(mre.joint_layers[k], torch.cat([w, q], 1), padding)
        w, q = joint[:, :4], joint[:, 4:]
        v = ref_decoder(mre.vision_layers[k], v, joint, padding, vision_padding)
    q = ref_block(mre.vision_merge, q, v, vision_padding)
    out_q, out_w, out_v = mre(queries, words, word_mask, vision, vision_padding)
    close(out_q, q)
    close(out_w, w)
    close(out_v, v)


def test_mqd_pools_words_from_the_text_part_of_the_memory_and_decodes_against_it():
    config = _config(num_fusion_layers=1, num_decoder_layers=1, num_refinement_layers=1)
    mqd = _randomize(MultimodalQueryDecoding(config, 5))
    queries, vision, text = torch.randn(1, 3, D), torch.randn(1, 5, D), torch.randn(1, 4, D)
    text_padding = torch.tensor([[False, False, False, True]])
    word_index = torch.tensor([[-1, 0, 1, -1]])
    word_mask = torch.tensor([[True, True]])
    vision_padding = torch.tensor([[False, False, False, False, True]])
    memory = mqd.vtf(vision, text, text_padding, vision_padding)
    mem_padding = torch.cat([vision_padding, text_padding], 1)
    words = pool_words(memory[:, 5:], word_index, 2)
    q = ref_decoder(mqd.fde[0], queries, memory, mem_padding)
    q, w, v = mqd.mre(q, words, word_mask, memory[:, :5], vision_padding)
    out_q, out_w, intermediate, out_v = mqd(queries, vision, text, text_padding, word_index, word_mask, vision_padding)
    close(out_q, q)
    close(out_w, w)
    close(out_v, v)
    assert len(intermediate) == 1


# ---------------------------------------------------------------- heads


def _identity_(linear: nn.Linear):
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.out_features, linear.in_features))
        linear.bias.zero_()


def test_span_head_scaled_dot_product_and_word_mask():
    head = SpanHead(4)
    _identity_(head.query_proj)
    _identity_(head.word_proj)
    queries = torch.tensor([[[1.0, 2.0, 0.0, 0.0]]])
    words = torch.tensor([[[3.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    scores = head(queries, words, torch.tensor([[True, True, False]]))
    assert scores.tolist() == [[[1.5, 1.0, MASKED_LOGIT]]]  # q.w / sqrt(4)


def test_box_head_sigmoid_and_reference_offset_on_centre_only():
    heads = PredictionHeads(_config())
    last = heads.box_head.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, math.log(3.0), -math.log(3.0)]))
    queries = torch.randn(1, 2, D)
    words, mask = torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.bool)
    plain = heads(queries, words, mask)["pred_boxes"]
    close(plain, torch.tensor([0.5, 0.5, 0.75, 0.25]).expand(1, 2, 4))
    reference = torch.tensor([[[0.2, 0.7], [0.9, 0.1]]])
    shifted = heads(queries, words, mask, box_reference=reference)["pred_boxes"]
    close(shifted[..., :2], reference)
    close(shifted[..., 2:], torch.tensor([0.75, 0.25]).expand(1, 2, 2))


def test_box_refinement_samples_a_non_square_box_at_its_edges_and_centre():
    refine = BoxRefinement(D)  # samples project to D // 4 = 2 channels
    grid = 4
    with torch.no_grad():
        refine.sample_proj.weight.zero_()
        refine.sample_proj.weight[0, 0] = refine.sample_proj.weight[1, 1] = 1.0
        refine.sample_proj.bias.zero_()
        refine.mlp.layers[-1].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    centres = box_ops.patch_centres(grid)  # (x, y) per patch, row-major
    vision = torch.zeros(1, 1 + grid * grid, D)
    vision[0, 1:, :2] = centres  # channel 0 = x, channel 1 = y of the patch
    vision[0, 0, :2] = 77.0  # the class token is not a place
    box = torch.tensor([[[0.4, 0.5, 0.4, 0.2]]])  # w = 2 h
    captured = {}
    refine.mlp.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
    out = refine(torch.zeros(1, 1, D), torch.logit(box), vision)
    close(out, torch.logit(box) + torch.tensor([1.0, 2.0, 3.0, 4.0]))  # residual on the logits
    samples = captured["x"][0, 0, D:].reshape(3, 3, 2)  # (row of y, column of x, channel)
    xs, ys = [0.2, 0.4, 0.6], [0.4, 0.5, 0.6]
    close(samples[..., 0], torch.tensor([xs] * 3))
    close(samples[..., 1], torch.tensor([[y] * 3 for y in ys]))


def test_alignment_head_cosine_over_temperature_nothing_slots_and_padding():
    head = AlignmentHead(2, 2, temperature=0.5)
    _identity_(head.row_proj)
    _identity_(head.patch_proj)
    with torch.no_grad():
        head.no_row.copy_(torch.tensor([0.0, -3.0]))
        head.no_patch.copy_(torch.tensor([-2.0, 0.0]))
    rows = torch.tensor([[[2.0, 0.0]]])
    vision = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 5.0], [1.0, 1.0], [-1.0, 0.0]]])
    c = 1 / math.sqrt(2)
    expected = torch.tensor([[[1.0, 0.0, c, -1.0, -1.0], [0.0, -1.0, -c, 0.0, 0.0]]]) / 0.5
    close(head(rows, vision), expected)
    masked = head(rows, vision, torch.tensor([[False, True, False, False]]))
    assert masked[0, :, 1].tolist() == [MASKED_LOGIT, MASKED_LOGIT]
    close(masked[0, :, [0, 2, 3, 4]], expected[0, :, [0, 2, 3, 4]])


def test_reference_points_are_the_softmax_expected_patch_centre_without_the_nothing_slots():
    big = 50.0
    logits = torch.tensor(
        [
            [
                [big, 0, 0, 0, 2 * big],  # patch 0 (the no-patch column is left out)
                [0, big, 0, 0, 0],  # patch 1: right of patch 0
                [0, 0, math.log(3.0), 0, 0],  # patch 2 three times the others
                [big, big, big, big, big],
            ]
        ]
    )  # the no-row row is dropped
    points = AlignmentHead.reference_points(logits)
    assert points.shape == (1, 3, 2)
    close(points[0, 0], torch.tensor([0.25, 0.25]))
    close(points[0, 1], torch.tensor([0.75, 0.25]))
    centres = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    close(points[0, 2], torch.tensor([1.0, 1.0, 3.0, 1.0]) / 6 @ centres)


# ---------------------------------------------------------------- box_ops


def test_image_frame_and_content_size_by_hand():
    assert box_ops.content_size((300, 100), 64) == (64, 21)
    assert box_ops.content_size((100, 300), 64) == (21, 64)
    assert box_ops.content_size((300, 130), 64) == (64, 28)  # 27.7 rounds up
    assert box_ops.content_size((1000, 1), 64) == (64, 1)
    assert box_ops.image_frame((300, 100), 64, "pad") == (1.0, 21 / 64)
    assert box_ops.image_frame((100, 300), 64, "pad") == (21 / 64, 1.0)
    assert box_ops.image_frame((100, 300), 64, "stretch") == (1.0, 1.0)


def test_normalize_and_denormalize_with_a_frame():
    frame = (1.0, 0.5)
    boxes = torch.tensor([[30.0, 10.0, 90.0, 50.0], [-5.0, 0.0, 400.0, 120.0]])
    normalized = box_ops.normalize_boxes(boxes, (300, 100), frame)
    # x / 300 * 1, y / 100 * 0.5; the second box clamped to the image first
    close(normalized, torch.tensor([[0.2, 0.15, 0.2, 0.2], [0.5, 0.25, 1.0, 0.5]]))
    close(
        box_ops.denormalize_boxes(normalized, (300, 100), frame),
        torch.tensor([[30.0, 10.0, 90.0, 50.0], [0.0, 0.0, 300.0, 100.0]]),
    )
    # a box reaching into the padding (below y = 0.5 of the square) is cut at the image's edge
    close(
        box_ops.denormalize_boxes(torch.tensor([0.5, 0.5, 0.2, 0.4]), (300, 100), frame),
        torch.tensor([120.0, 60.0, 180.0, 100.0]),
    )


def test_patch_centres_are_row_major_x_then_y():
    close(box_ops.patch_centres(2), torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))


# ---------------------------------------------------------------- QGNModel glue


def _tiny_model(**overrides):
    from qgn.modeling import QGNConfig, QGNModel

    return QGNModel(QGNConfig.tiny(vocab_size=50, **overrides)).eval()


def test_vision_padding_marks_the_patches_without_a_pixel_never_the_class_token():
    model = _tiny_model()  # 64 px, 8 px patches: an 8 x 8 grid
    pixels = torch.zeros(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, :20, :41] = True  # 20 rows, 41 columns of image: patch rows 0-2, columns 0-5 hold a pixel
    padding = model._vision_padding(mask, pixels)
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[:3, :6] = False
    assert padding[0, 0].item() is False
    assert torch.equal(padding[0, 1:], expected.flatten())
    assert model._vision_padding(None, pixels) is None


def test_presence_and_box_prior_add_the_alignment_to_the_heads():
    model = _randomize(_tiny_model(lambda_align=1.0, align_presence=True, align_box_prior=True))
    d = model.config.hidden_size
    queries, words = torch.randn(1, 3, d), torch.randn(1, 4, d)
    word_mask = torch.tensor([[True, True, True, False]])
    vision = torch.randn(1, 65, d)
    patch_padding = torch.zeros(1, 64, dtype=torch.bool)
    patch_padding[0, 40:] = True
    with torch.no_grad():
        out = model._predict(queries, words, word_mask, vision, patch_padding)
        align = model.alignment(queries, vision, patch_padding)
        plain = model.heads(queries, words, word_mask, vision=vision)
        prior = model.heads(
            queries, words, word_mask, box_reference=AlignmentHead.reference_points(align), vision=vision
        )
    evidence = torch.stack([align[0, :-1, :-1].logsumexp(-1), align[0, :-1, -1]], dim=-1)
    close(out["notarget_logits"][0], plain["notarget_logits"][0] + evidence)
    close(out["pred_boxes"], prior["pred_boxes"])
    assert not torch.allclose(out["pred_boxes"], plain["pred_boxes"])
    reference = AlignmentHead.reference_points(align)
    assert (reference[..., 1] < 5 / 8 + 1e-6).all(), "padding patches (rows 5-7) never weigh in the box prior"
