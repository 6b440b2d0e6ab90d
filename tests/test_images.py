"""How an image becomes the RGB picture the model sees: transparency on white, 16-bit grayscale
scaled (not clipped to white), no copy of an upright RGB image, one clean line for a huge one."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from qgn.data.images import image_size, load_image, upright
from qgn.errors import DataError


def saved(image: Image.Image, fmt: str = "PNG") -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    buffer.seek(0)
    return buffer


def test_transparent_pixels_are_shown_on_white_not_in_their_hidden_colour():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # invisible red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one visible blue pixel
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    out = load_image(saved(rgba), name="t.png")
    assert out.mode == "RGB"
    assert out.getpixel((3, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((1, 0)) == pytest.approx((127, 127, 127), abs=1)
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    out = load_image(saved(palette), name="p.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 255, 0)


def test_16_bit_grayscale_is_scaled_to_8_bits_not_white():
    ramp = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(ramp)  # mode I;16
    out = load_image(saved(image), name="g16.png")
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]
    assert out.getpixel((2, 0)) == (128, 128, 128)


def test_an_upright_rgb_image_is_not_copied():
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    assert upright(image) is image
    turned = Image.new("RGB", (8, 4))
    exif = turned.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    turned.save(buffer, format="JPEG", exif=exif)
    assert load_image(io.BytesIO(buffer.getvalue()), name="o6.jpg").size == (4, 8)  # still turned upright


def test_header_size_reads_no_pixels_and_errors_name_the_upload(monkeypatch, caplog):
    big = saved(Image.new("L", (3000, 2000)))
    assert image_size(big, name="big.png") == (3000, 2000)
    with pytest.raises(DataError) as err:
        image_size(io.BytesIO(b"not a picture"), name="upload.jpg")
    assert str(err.value).startswith("upload.jpg: cannot read image") and "BytesIO" not in str(err.value)
    with pytest.raises(DataError) as err:
        load_image(io.BytesIO(b"not a picture"), name="upload.jpg")
    assert "BytesIO" not in str(err.value) and " at 0x" not in str(err.value)
    # Over PIL's warning limit: one line of ours through logging, not PIL's raw warning.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)
    with caplog.at_level(logging.WARNING, logger="qgn.data.images"):
        load_image(saved(Image.new("L", (3000, 2000))), name="big.png")
    assert "big.png is 6 megapixels" in caplog.text
    with pytest.raises(DataError, match="too large to decode safely: over 8 megapixels; shrink it"):
        load_image(saved(Image.new("L", (3000, 3000))), name="huge.png")
