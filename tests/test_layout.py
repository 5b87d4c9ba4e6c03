"""One image layout everywhere: channel-first (C, H, W) images whatever file they come from, the same
content hash for the same images, and a clear refusal when two inputs would be compared in another order."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from difflens import DifflensError
from difflens.analysis import memorization as mm
from difflens.cli import app
from difflens.data import as_dataset, check_same_layout, convert, load
from difflens.data.layout import channels_last

H, W = 6, 5


def _colour_images(n: int, seed: int) -> np.ndarray:
    """n random RGB images as uint8 (n, H, W, 3), the pixel order of an image file."""
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def _folder(path, images: np.ndarray):
    path.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(path / f"{i:03d}.png")
    return path


@pytest.mark.parametrize("stored", ["CHW", "HWC"])
def test_torch_samples_against_a_png_folder_find_the_memorized_half(tmp_path, stored):
    """Half of the samples are training images saved from PyTorch (channel-first) or as (N, H, W, 3):
    both must be found memorized against the PNG training folder (the old code found 0 %)."""
    train = _colour_images(16, seed=0)
    folder = _folder(tmp_path / "train", train)
    copies, fresh = train[[1, 4, 7, 10, 12, 15]], _colour_images(6, seed=1)
    samples = np.concatenate([copies, fresh])
    np.save(tmp_path / "s.npy", samples.transpose(0, 3, 1, 2) if stored == "CHW" else samples)
    out = tmp_path / "mem"
    result = CliRunner().invoke(
        app, ["memorization", "--samples", str(tmp_path / "s.npy"), "--data", str(folder), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "memorization.json").read_text())
    mem = np.load(out / "memorization.npz")
    assert report["memorization_ratio"] == pytest.approx(0.5)
    assert np.all(mem["d1"][:6] == 0.0)
    assert np.all(mem["d1"][6:] > 0.0)  # the copies, exactly
    assert report["dataset"]["layout"] == "CHW"


def test_same_images_as_npy_folder_and_zarr_hash_alike(tmp_path):
    colour = _colour_images(5, seed=2)
    folder = _folder(tmp_path / "rgb", colour)
    np.save(tmp_path / "chw.npy", np.ascontiguousarray(colour.transpose(0, 3, 1, 2)))
    np.save(tmp_path / "hwc.npy", colour)
    convert(str(folder), tmp_path / "rgb.zarr")
    ref = load(str(folder))
    assert ref.shape == (3, H, W)
    for spec in ("chw.npy", "hwc.npy", "rgb.zarr"):
        ds = load(str(tmp_path / spec))
        assert ds.shape == (3, H, W), spec
        assert ds.stats.hash == ref.stats.hash, spec
        assert torch.equal(ds.take(np.array([4, 0, 2])), ref.take(np.array([4, 0, 2])))
    assert "channel-last" in " ".join(load(str(tmp_path / "hwc.npy")).notes)
    # grey: (H, W) files, (N, 1, H, W) from torch and (N, H, W) are the same values in the same order
    grey = colour[..., 0]
    gfolder = _folder(tmp_path / "grey", grey)
    np.save(tmp_path / "g1.npy", grey[:, None])
    np.save(tmp_path / "g.npy", grey)
    np.save(tmp_path / "g3.npy", grey[..., None])  # (N, H, W, 1): channel-last grey
    specs = (gfolder, tmp_path / "g1.npy", tmp_path / "g.npy", tmp_path / "g3.npy")
    hashes = {load(str(p)).stats.hash for p in specs}
    assert len(hashes) == 1
    assert load(str(gfolder)).layout == "HW"


def test_hwc_npy_is_read_channel_first_lazily(tmp_path):
    """A memory-mapped (N, H, W, 3) array stays on disk as stored; rows come out as (C, H, W) flattened."""
    x = np.random.default_rng(3).standard_normal((7, H, W, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load(str(tmp_path / "x.npy"))
    assert isinstance(ds.array, np.memmap)
    assert ds.channels_last
    assert ds.shape == (3, H, W)
    chw = x.transpose(0, 3, 1, 2).reshape(7, -1)
    assert np.array_equal(ds.rows(0, 7).numpy(), chw)
    idx = np.array([6, 2, 2, 0])
    assert np.array_equal(ds.take(idx).numpy(), chw[idx])
    train, held = ds.split(0.3, seed=0)  # subsets keep the layout
    assert train.shape == held.shape == (3, H, W)
    assert np.array_equal(held.rows(0, held.n).numpy(), chw[held.indices])
    assert ds.summary()["layout"] == "CHW"
    assert "notes" in ds.summary()


@pytest.mark.parametrize(
    ("shape", "last"),
    [((6, 5, 3), True), ((6, 5, 4), True), ((6, 5, 1), True), ((3, 6, 5), False), ((1, 6, 5), False),
     ((1, 6, 1), False), ((5, 6, 7), False), ((6, 5), False), ((12,), False)],
)  # fmt: skip
def test_layout_detection_rule(shape, last):
    assert channels_last(shape, "x") is last


def test_ambiguous_layout_is_refused_until_named(tmp_path):
    x = np.random.default_rng(4).integers(0, 256, (4, 3, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    with pytest.raises(DifflensError, match="--layout CHW\\|HWC"):
        load(str(tmp_path / "a.npy"))
    assert load(str(tmp_path / "a.npy"), layout="CHW").shape == (3, 6, 3)
    hwc = load(str(tmp_path / "a.npy"), scale="none", layout="HWC")
    assert hwc.shape == (3, 3, 6)
    assert np.array_equal(hwc.rows(0, 4).numpy(), x.transpose(0, 3, 1, 2).reshape(4, -1))
    with pytest.raises(DifflensError, match="unknown layout"):
        load(str(tmp_path / "a.npy"), layout="NHWC")
    np.save(tmp_path / "flat.npy", np.zeros((4, 9), np.float32))
    with pytest.raises(DifflensError, match="layout HWC needs"):
        load(str(tmp_path / "flat.npy"), layout="HWC")


def test_check_same_layout():
    check_same_layout((3, 6, 5), (3, 6, 5), "a", "b")
    check_same_layout((1, 6, 5), (6, 5), "a", "b")  # grey: same flattened order
    check_same_layout((6, 5, 1), (6, 5), "a", "b")
    check_same_layout((90,), (3, 6, 5), "a", "b")  # flat samples carry no layout
    check_same_layout((4, 4), (3, 6, 5), "a", "b")  # other sizes: the caller's size check says so
    with pytest.raises(DifflensError, match=r"samples have shape \(6, 5, 3\) but the data \(3, 6, 5\)"):
        check_same_layout((6, 5, 3), (3, 6, 5), "samples", "the data")
    with pytest.raises(DifflensError, match="different layout"):
        check_same_layout((5, 6), (6, 5), "a", "b")


def test_inputs_of_one_command_with_another_layout_are_refused(tmp_path):
    train = _colour_images(6, seed=5)
    folder = _folder(tmp_path / "train", train)
    ds = load(str(folder))
    hwc = torch.from_numpy(train.astype(np.float32) / 127.5 - 1.0)  # (N, H, W, 3): same size, other order
    assert as_dataset(hwc).layout == "HWC"  # wrapped as it is, and said so
    with pytest.raises(DifflensError, match="different layout"):
        mm.memorization(hwc, ds)
    assert mm.memorization(hwc.permute(0, 3, 1, 2), ds).memorization_ratio == 1.0
    np.save(tmp_path / "q.npy", train.astype(np.float32) / 127.5 - 1.0)
    result = CliRunner().invoke(
        app,
        [
            "denoise",
            "--queries",
            str(tmp_path / "q.npy"),
            "--sigma",
            "0.5",
            "--data",
            str(folder),
            "-o",
            str(tmp_path / "o.npy"),
        ],
    )
    assert result.exit_code == 2
    assert "different layout" in result.output
    assert not (tmp_path / "o.npy").exists()


def test_model_inputs_and_data_of_another_layout_are_refused():
    diffusers = pytest.importorskip("diffusers")
    from difflens.models import diffusers_denoiser

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=4,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    sched = diffusers.DDPMScheduler()
    with pytest.raises(DifflensError, match="different layout"):
        diffusers_denoiser(unet, sched, shape=(4, 4, 3))
    assert diffusers_denoiser(unet, sched, shape=(3, 4, 4)).denoiser.shape == (3, 4, 4)


def test_integer_data_not_in_0_255_gets_a_scaling_note(tmp_path):
    from sklearn.datasets import load_digits

    np.save(tmp_path / "d.npy", load_digits().images.astype(np.int64))  # 0…16
    with pytest.warns(UserWarning, match="0…16 scaled as 0…255"):
        ds = load(str(tmp_path / "d.npy"))
    assert any("--scale minmax" in n for n in ds.summary()["notes"])
    assert ds.stats.maximum == pytest.approx(16 / 127.5 - 1.0)  # the documented scaling, not a silent other one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = load(str(tmp_path / "d.npy"), scale="minmax")  # asked for: no note
        np.save(tmp_path / "u.npy", np.array([[0, 255], [128, 64]], dtype=np.uint8))
        u = load(str(tmp_path / "u.npy"))
        dark = load(str(_folder(tmp_path / "dark", _colour_images(3, seed=6) // 4)))  # image files: 0…255 as read
    assert not full.notes
    assert not u.notes
    assert not dark.notes
    assert "notes" not in u.summary()
