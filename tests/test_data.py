import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam2ptq_core.sam2 import images as data
from sam2ptq_core.sam2.images import DataError, load_rgb, normalize, resize_uint8, scale_points, select_images
from tests.helpers import ROOT


@pytest.mark.parametrize("size", [128, 1024])  # shrink (antialiased) and enlarge
def test_resize_matches_independent_antialiased_bilinear(size):
    im = load_rgb(ROOT / "examples/images/astronaut.jpg")
    got = resize_uint8(im, size).float()
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float()
    ref = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    diff = (got - ref).abs()
    # PIL rounds to uint8 with fixed-point weights: measured mean 0.25, max 0.85 (128) / 1.0 (1024) grey levels
    assert float(diff.mean()) < 0.35 and float(diff.max()) <= 1.01


def test_normalize_values():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1)
    y = normalize(x)
    ref = torch.tensor([(0 - .485) / .229, (1 - .456) / .224, (128 / 255 - .406) / .225]).view(3, 1, 1)
    assert torch.allclose(y, ref, atol=1e-6)


def test_points_scale_with_plain_resize():
    p = scale_points(torch.tensor([[100.0, 50.0]]), width=400, height=200, size=1024)
    assert torch.allclose(p, torch.tensor([[256.0, 256.0]]))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_modes_convert_to_rgb(tmp_path, mode):
    arr = (np.arange(32 * 24) % 251).reshape(24, 32)
    if mode == "I;16":
        im = Image.fromarray((arr * 200).astype(np.uint16))
        path = tmp_path / "x.png"
    else:
        im = Image.fromarray(arr.astype(np.uint8)).convert(mode)
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (32, 24)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_corrupt_files_skipped_and_counted(tmp_path, caplog):
    for i in range(3):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level("WARNING"):
        paths, skipped = select_images(tmp_path, 3, seed=0)
    assert len(paths) == 3 and skipped == 1 and "1 unreadable" in caplog.text


def test_an_unreadable_image_is_warned_about_once(tmp_path, caplog):
    """Preflight, the calibration stage and the held-out draw decode the same folder in one process: a skipped file
    is one warning line, not one per draw plus a count line each time (main: 6 lines here for one file)."""
    from sam2ptq_core.sam2.images import held_out
    for i in range(4):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with caplog.at_level("WARNING"):
        for _ in range(2):  # preflight, then the stage
            paths, skipped = select_images(tmp_path, 2, seed=8)
            assert skipped == 1
        held_out("", str(tmp_path), 2, 8, {str(p) for p in paths})  # its draw meets bad.jpg first
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"skipping 1 unreadable image in {tmp_path}: bad.jpg (cannot identify image file "
                     f"'{tmp_path / 'bad.jpg'}')"], lines


def test_too_few_images_names_folder_and_numbers(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=rf"'{tmp_path}' has 1 usable images but 5 were asked for"):
        select_images(tmp_path, 5, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        select_images(tmp_path / "nope", 1, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no images"):
        select_images(empty, 1, seed=0)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(data, "MAX_PIXELS", 5000)
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(tmp_path / "big.png")


def test_selection_is_seeded_and_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / ("sub" if i % 2 else ".") / f"{i}.png")
    a, _ = select_images(tmp_path, 4, seed=1)
    b, _ = select_images(tmp_path, 4, seed=1)
    c, _ = select_images(tmp_path, 4, seed=2)
    assert a == b and a != c and any("sub" in str(p) for p in a)


def test_16bit_greyscale_is_scaled_by_bit_depth(tmp_path):
    """A dark 16-bit photo stays dark: the same picture as 8-bit and 16-bit decodes to the same pixels (±1)."""
    import numpy as np
    g8 = np.asarray(Image.open(ROOT / "examples/images/coffee.jpg").convert("L"), dtype=np.uint16) * 200 // 255
    Image.fromarray(g8.astype(np.uint8), "L").save(tmp_path / "a8.png")
    Image.fromarray((g8 * 257).astype(np.uint16)).save(tmp_path / "a16.png")
    a8 = np.asarray(load_rgb(tmp_path / "a8.png"), dtype=np.float64)
    a16 = np.asarray(load_rgb(tmp_path / "a16.png"), dtype=np.float64)
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    assert np.abs(a8 - a16).max() <= 1 and abs(a8.mean() - a16.mean()) < 0.01  # measured: max 0, mean diff 0


def test_gif_is_accepted_as_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert [p.name for p in data.list_images(tmp_path)] == ["anim.gif"]
    im = load_rgb(tmp_path / "anim.gif")
    assert im.size == (40, 30) and im.getpixel((5, 5))[0] > 200 and im.getpixel((5, 5))[2] < 50
