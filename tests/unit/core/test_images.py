"""decode_image on every hostile input the ingestion meets, and list_images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cyclegan_core.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, InvalidImage, decode_image, list_images


def gradient(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=2).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB").convert(mode)


def forged_png(path: Path, width: int, height: int) -> Path:
    """A tiny, well-formed PNG whose IHDR claims width x height (one row of real data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 8)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def reason_of(path: Path) -> str:
    with pytest.raises(InvalidImage) as info:
        decode_image(path)
    assert str(path) in str(info.value), "the message must name the file"
    return info.value.reason


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reason_of(path) == "empty"


def test_text_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is a shopping list, not a photo\n" * 20)
    assert reason_of(path) == "not_image"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert reason_of(tmp_path / "nowhere.png") == "unreadable"


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    full = tmp_path / "full.jpg"
    gradient(size=(128, 96)).save(full, quality=90)
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert reason_of(cut) == "corrupt"


def test_png_with_broken_pixel_stream_is_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    gradient(size=(64, 64)).save(good)
    data = bytearray(good.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 2 : start + 40] = bytes(38)  # zero out the zlib stream behind its header
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    assert reason_of(bad) == "corrupt"


def test_forged_huge_header_is_rejected_before_decoding(tmp_path: Path) -> None:
    # 10^10 pixels: Pillow's own bomb guard fires inside Image.open
    assert reason_of(forged_png(tmp_path / "bomb.png", 100_000, 100_000)) == "too_large"
    # 81 MP: under Pillow's guard (~89 MP) but over ours; the file has one row, so decoding would fail
    with pytest.raises(InvalidImage) as info:
        decode_image(forged_png(tmp_path / "big.png", 9_000, 9_000))
    assert info.value.reason == "too_large"
    assert "MAX_PIXELS" in str(info.value)
    assert 9_000 * 9_000 > MAX_PIXELS


def test_rgb_jpeg_decodes_unchanged_in_size(tmp_path: Path) -> None:
    path = tmp_path / "photo.JPG"
    gradient(size=(40, 30)).save(path, format="JPEG")
    image = decode_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    with Image.open(path) as reference:  # the very pixels of the file, after decode_image closed it
        assert np.array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red under the alpha
    rgba[:4, :, 3] = 0  # top half fully transparent
    rgba[4:, :, 3] = 255  # bottom half opaque
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = np.asarray(decode_image(path))
    assert (pixels[:4] == 255).all(), "transparent pixels show the white background"
    assert (pixels[4:] == [200, 0, 0]).all()


def test_grey_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.merge("LA", [Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)]).save(path)
    assert (np.asarray(decode_image(path)) == 255).all()


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    gradient("L").save(path)
    pixels = np.asarray(decode_image(path))
    assert pixels.shape == (30, 40, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.max() > 200


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(decode_image(path))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]


def test_cmyk_jpeg_converts_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red ink-wise
    image = decode_image(path)
    assert image.mode == "RGB"
    red, green, blue = np.asarray(image).reshape(-1, 3).mean(0)
    assert red > 200 and green < 60 and blue < 60


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette_image = gradient("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    plain = tmp_path / "palette.png"
    palette_image.save(plain)
    assert decode_image(plain).mode == "RGB"

    transparent = tmp_path / "palette_alpha.png"
    index = palette_image.getpixel((0, 0))
    palette_image.save(transparent, transparency=index)
    pixels = np.asarray(decode_image(transparent))
    assert (pixels[0, 0] == 255).all(), "the transparent palette entry shows white"


def test_float_images_are_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(path)
    assert reason_of(path) == "unsupported_mode"


def test_list_images_sorted_filtered_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "c.webp", ".hidden.png", "notes.txt", "d.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp", "d.tiff"]
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"} == set(IMAGE_EXTENSIONS)


def test_list_images_on_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="trainA"):
        list_images(tmp_path / "trainA")
