"""``image_geometry="pad"``: the picture keeps its aspect ratio, boxes map back to its pixels
exactly, and the padding is never content (the ViT, the attention over visual tokens, the
alignment losses and the heads ignore it)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from qgn.data.pipeline import Collator, GMNERDataset, ImageTransform, model_inputs
from qgn.data.records import Entity, Post
from qgn.modeling.box_ops import content_size, denormalize_boxes, image_frame, normalize_boxes
from qgn.modeling.configuration_qgn import QGNConfig
from qgn.modeling.criterion import SetCriterion
from qgn.modeling.modeling_qgn import QGNModel
from qgn.modeling.postprocess import PostProcessor
from qgn.modeling.tokenizer import build_word_tokenizer

RED = (220, 40, 40)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def drawn(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, (230, 230, 230))
    image.paste(RED, box)
    return image


def sideways_jpeg(path, upright: Image.Image) -> str:
    """``upright`` stored turned by 90 degrees with EXIF orientation 6, as a phone saves it: a
    viewer (and qgn) turns it back."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes this rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())
    return str(path)


@pytest.mark.parametrize("size", [(300, 100), (100, 200), (64, 64), (1000, 7)])
def test_frame_and_boxes_round_trip(size):
    w, h = content_size(size, 64)
    assert max(w, h) == 64 and min(w, h) == max(1, round(min(size) * 64 / max(size)))
    frame = image_frame(size, 64, "pad")
    assert frame == (w / 64, h / 64)
    boxes = torch.tensor([[0.0, 0.0, size[0], size[1]], [size[0] * 0.2, size[1] * 0.3, size[0] * 0.7, size[1] * 0.9]])
    normalised = normalize_boxes(boxes, size, frame)
    assert torch.allclose(denormalize_boxes(normalised, size, frame), boxes, atol=1e-3)
    # the whole image is the top-left w x h of the square
    assert torch.allclose(normalised[0], torch.tensor([frame[0] / 2, frame[1] / 2, frame[0], frame[1]]))
    assert image_frame(size, 64, "stretch") == (1.0, 1.0)


def test_pad_keeps_the_picture_and_masks_the_rest():
    transform = ImageTransform(64, geometry="pad")
    # a 3:1 image with a red square of 30 x 30 px at x 150-180: a square in the pixels too
    pixels, mask = transform.with_mask(drawn((300, 100), (150, 40, 180, 70)))
    assert pixels.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert mask[:21, :64].all() and not mask[21:].any()  # 100 * 64 / 300 = 21.3 -> 21 rows
    assert (pixels[:, 21:] == 0).all()
    red = (pixels[0] > 1.0) & (pixels[2] < 0.0)  # CLIP-normalised red
    rows, cols = red.nonzero().unbind(-1)
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert abs(height - width) <= 1  # still a square (stretch would make it 3 x 1)
    stretched = ImageTransform(64, geometry="stretch")(drawn((300, 100), (150, 40, 180, 70)))
    red = (stretched[0] > 1.0) & (stretched[2] < 0.0)
    rows, cols = red.nonzero().unbind(-1)
    assert (rows.max() - rows.min()) > 2 * (cols.max() - cols.min())


@pytest.mark.parametrize("rotated", [False, True])
def test_boxes_map_back_to_the_original_pixels(tmp_path, rotated):
    """Targets of a 3:1 and a 1:2 image (the 1:2 one also EXIF-rotated) normalised by the dataset,
    given back as perfect predictions, come out of the post-processor as the gold pixel boxes;
    and the normalised box lies where the object is in the pixels the model sees."""
    config = QGNConfig.tiny(vocab_size=200, image_geometry="pad")
    posts, images = [], []
    for k, (size, box) in enumerate((((300, 100), (150, 40, 180, 70)), ((100, 200), (20, 120, 50, 150)))):
        image = drawn(size, box)
        path = tmp_path / f"p{k}.jpg"
        if rotated:
            sideways_jpeg(path, image)
        else:
            image.save(path, quality=95)
        posts.append(Post(f"p{k}", ["Anna", "smiles"], [Entity(0, 1, "PER", [box])], image_path=str(path)))
        images.append((size, box))
    tokenizer = build_word_tokenizer(["Anna", "smiles"])
    dataset = GMNERDataset(posts, tokenizer, config)
    batch = Collator(tokenizer.pad_token_id)([dataset[0], dataset[1]])
    for b, (size, _box) in enumerate(images):
        assert tuple(posts[b].image_size) == size  # the upright size, EXIF applied
        target = batch["targets"][b]["boxes"][0]
        cx, cy = float(target[0]) * 64, float(target[1]) * 64
        pixel = batch["pixel_values"][b, :, int(cy), int(cx)]
        assert pixel[0] > 1.0 and pixel[2] < 0.0  # the box centre is on the red square
    outputs = {
        "type_logits": torch.tensor([[[9.0, -9, -9, -9, -9]]]).repeat(2, 1, 1),
        "start_logits": torch.tensor([[[9.0, -9]]]).repeat(2, 1, 1),
        "end_logits": torch.tensor([[[9.0, -9]]]).repeat(2, 1, 1),
        "word_mask": torch.ones(2, 2, dtype=torch.bool),
        "pred_boxes": torch.stack([t["boxes"][:1] for t in batch["targets"]]),
        "notarget_logits": torch.tensor([[[9.0, -9]]]).repeat(2, 1, 1),
    }
    predictions = PostProcessor(config)(outputs, posts)
    for (_size, box), preds in zip(images, predictions):
        assert preds[0].box == pytest.approx(box, abs=1e-3)


def padded_batch(config: QGNConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two posts whose images fill the top 24 rows and the left 40 columns of the 64 px square
    (of the input's square times ``pixel_refine_scale``, r, with ``24 r`` and ``40 r``)."""
    side, r = config.input_image_size, config.pixel_refine_scale
    g = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(5, 100, (2, 6), generator=g),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
        "word_index": torch.tensor([[-1, 0, 1, 2, 3, -1]] * 2),
        "word_mask": torch.ones(2, 4, dtype=torch.bool),
        "pixel_values": torch.randn(2, 3, side, side, generator=g),
    }
    mask = torch.zeros(2, side, side, dtype=torch.bool)
    mask[0, : 24 * r] = True
    mask[1, :, : 40 * r] = True
    batch["pixel_mask"] = mask
    batch["pixel_values"] = batch["pixel_values"] * mask[:, None]
    return batch


def lever_config(**overrides) -> QGNConfig:
    return QGNConfig.tiny(
        vocab_size=100,
        lambda_align=1.0,
        lambda_align_words=1.0,
        align_presence=True,
        align_box_prior=True,
        box_refine=True,
        box_refine_pixels=True,
        **overrides,
    )


@pytest.mark.parametrize("scale", [1, 2])
def test_padding_pixels_change_nothing(scale):
    """Whatever the padding holds, every output (boxes, alignment, auxiliary layers) is the same:
    the ViT, VTF, FDE, MRE, the alignment and the box refinement never read it as content; with
    an input twice the ViT's side (``pixel_refine_scale``), neither do the pooling, the pixel
    pyramid and the pixel patch branch."""
    torch.manual_seed(0)
    config = lever_config(pixel_refine_scale=scale, pixel_patch_branch=scale > 1)
    model = QGNModel(config).train()  # training mode: alignment logits and aux outputs too
    if scale > 1:  # a branch that is not zero, so the test sees what it reads
        torch.nn.init.normal_(model.pixel_branch.proj.weight, std=0.5)
    side = config.input_image_size
    batch = padded_batch(model.config)
    noisy = dict(batch)
    noisy["pixel_values"] = batch["pixel_values"] + 5 * torch.randn(2, 3, side, side) * ~batch["pixel_mask"][:, None]
    first, second = model(**batch), model(**noisy)
    for key in ("pred_boxes", "notarget_logits", "type_logits", "start_logits", "align_logits", "align_word_logits"):
        assert torch.allclose(first[key], second[key], atol=1e-5), key
    for a, b in zip(first["aux_outputs"], second["aux_outputs"]):
        assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=1e-5)
    # ... while the image's own pixels do matter
    changed = dict(batch)
    changed["pixel_values"] = batch["pixel_values"] + torch.randn(2, 3, side, side) * batch["pixel_mask"][:, None]
    assert not torch.allclose(model(**changed)["pred_boxes"], first["pred_boxes"], atol=1e-4)
    # without the mask the same noise does change the outputs: the mask is what holds them
    unmasked = {k: v for k, v in noisy.items() if k != "pixel_mask"}
    assert not torch.allclose(model(**unmasked)["pred_boxes"], first["pred_boxes"], atol=1e-4)


def test_padding_patches_are_no_alignment_candidates_and_have_no_loss():
    torch.manual_seed(0)
    model = QGNModel(lever_config()).train()
    batch = padded_batch(model.config)
    outputs = model(**batch)
    padding = outputs["patch_padding"]  # (B, G): 8 x 8 grid, 3 rows of image in post 0, 5 columns in post 1
    assert padding.shape == (2, 64)
    assert padding[0].view(8, 8)[:3].logical_not().all() and padding[0].view(8, 8)[3:].all()
    assert padding[1].view(8, 8)[:, :5].logical_not().all() and padding[1].view(8, 8)[:, 5:].all()
    align = outputs["align_logits"]
    assert (align[:, :, :-1][padding[:, None, :].expand(-1, align.shape[1], -1)] <= -1e3).all()
    reference = model.alignment.reference_points(align)
    assert (reference[0, :, 1] < 3 / 8).all() and (reference[1, :, 0] < 5 / 8).all()  # inside the image
    targets = [
        {
            "labels": torch.tensor([0]),
            "start": torch.tensor([0]),
            "end": torch.tensor([0]),
            "boxes": torch.tensor([[0.3, 0.15, 0.2, 0.1]]),
            "has_box": torch.tensor([True]),
            "entity_index": torch.tensor([0]),
        }
        for _ in range(2)
    ]
    loss, parts = SetCriterion(model.config)(outputs, targets)
    assert torch.isfinite(loss) and {"loss_align", "loss_align_words"} <= set(parts)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_stretch_and_pad_agree_on_square_images():
    torch.manual_seed(0)
    model = QGNModel(lever_config()).eval()
    batch = padded_batch(model.config)
    batch["pixel_mask"] = torch.ones_like(batch["pixel_mask"])
    with torch.no_grad():
        masked = model(**batch)
        plain = model(**{k: v for k, v in batch.items() if k != "pixel_mask"})
    assert torch.allclose(masked["pred_boxes"], plain["pred_boxes"], atol=1e-5)


def test_old_checkpoints_load_as_stretch(tmp_path):
    config = QGNConfig.tiny(vocab_size=50)
    data = config.to_dict()
    del data["image_geometry"]
    import json

    (tmp_path / "config.json").write_text(json.dumps(data))
    assert QGNConfig.load(tmp_path / "config.json").image_geometry == "stretch"
    assert QGNConfig.tiny().image_geometry == "pad" and QGNConfig().image_geometry == "pad"
    with pytest.raises(ValueError, match="image_geometry"):
        QGNConfig.tiny(image_geometry="crop")


def test_model_inputs_carry_the_mask_only_for_pad(tmp_path):
    tokenizer = build_word_tokenizer(["Anna"])
    image = tmp_path / "a.png"
    drawn((120, 40), (10, 10, 20, 20)).save(image)
    post = Post("a", ["Anna"], [], image_path=str(image))
    for geometry, has_mask in (("pad", True), ("stretch", False)):
        config = QGNConfig.tiny(vocab_size=50, image_geometry=geometry)
        batch = Collator(0)([GMNERDataset([post], tokenizer, config)[0]])
        assert ("pixel_mask" in model_inputs(batch)) is has_mask
