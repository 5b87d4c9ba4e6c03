"""Data specs: built-ins, memory-mapped files, images, toys, splits, and clear errors for bad data."""

import numpy as np
import pytest
from PIL import Image

from difflens import DifflensError
from difflens.data import Dataset, load


def test_digits_is_the_bundled_set_scaled_to_minus_one_one():
    ds = load("digits")
    assert (ds.n, ds.dim, ds.shape) == (1797, 64, (8, 8))
    x = ds.rows(0, ds.n).numpy()
    assert x.min() == -1.0
    assert x.max() == 1.0
    from sklearn.datasets import load_digits

    assert np.allclose(x, load_digits().data / 8.0 - 1.0)
    assert len(ds.labels) == 1797
    assert ds.summary()["hash"] == load("digits").summary()["hash"]


def test_npy_is_memory_mapped_and_streamed(tmp_path):
    arr = np.random.default_rng(0).standard_normal((50, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    ds = load(str(tmp_path / "x.npy"))
    assert isinstance(ds.array, np.memmap)
    assert (ds.n, ds.dim, ds.shape) == (50, 12, (3, 4))
    blocks = [x for _, x in ds.chunks(7)]
    assert np.allclose(np.concatenate(blocks), arr.reshape(50, 12))
    idx = np.array([4, 1, 33])
    assert np.allclose(ds.take(idx).numpy(), arr.reshape(50, 12)[idx])
    assert ds.stats.variance == pytest.approx(float(arr.reshape(50, 12).var(0).mean()), rel=1e-5)


def test_uint8_arrays_are_scaled_and_floats_kept(tmp_path):
    np.save(tmp_path / "u.npy", np.array([[0, 255], [128, 64]], dtype=np.uint8))
    x = load(str(tmp_path / "u.npy")).rows(0, 2).numpy()
    assert x[0, 0] == -1.0
    assert x[0, 1] == 1.0
    np.save(tmp_path / "f.npy", np.array([[3.0, 5.0], [7.0, 9.0]], dtype=np.float64))
    assert np.allclose(load(str(tmp_path / "f.npy")).rows(0, 2).numpy(), [[3, 5], [7, 9]])
    mm = load(str(tmp_path / "f.npy"), scale="minmax").rows(0, 2).numpy()
    assert mm.min() == pytest.approx(-1.0)
    assert mm.max() == pytest.approx(1.0)


def test_npz_keys(tmp_path):
    np.savez(tmp_path / "d.npz", train=np.ones((4, 2), np.float32), test=np.zeros((2, 2), np.float32))
    assert load(f"{tmp_path}/d.npz:train").n == 4
    with pytest.raises(DifflensError, match="name one"):
        load(f"{tmp_path}/d.npz")
    with pytest.raises(DifflensError, match="no array 'val'"):
        load(f"{tmp_path}/d.npz:val")
    np.savez(tmp_path / "one.npz", x=np.ones((3, 2), np.float32))
    assert load(f"{tmp_path}/one.npz").n == 3


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load(str(tmp_path))
    assert (ds.n, ds.shape, ds.layout) == (3, (3, 5, 6), "CHW")  # channel-first, as torch models use
    chw = imgs.transpose(0, 3, 1, 2).reshape(3, -1)
    assert np.allclose(ds.rows(0, 3).numpy(), chw / 127.5 - 1.0, atol=1e-6)


def test_ragged_and_unreadable_images(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DifflensError, match="differ in size"):
        load(str(tmp_path))
    (tmp_path / "b.png").write_bytes(b"garbage")
    with pytest.raises(DifflensError, match=r"cannot read image b\.png"):
        load(str(tmp_path))


def test_toys():
    c = load("toy:circle:n=8,radius=2").rows(0, 8).numpy()
    assert np.allclose(np.linalg.norm(c, axis=1), 2.0)
    g = load("toy:gmm:n=100,k=3,dim=5,seed=1")
    assert (g.n, g.dim) == (100, 5)
    assert load("toy:gmm:n=100,k=3,dim=5,seed=1").stats.hash == g.stats.hash
    assert load("toy:gmm:n=100,k=3,dim=5,seed=2").stats.hash != g.stats.hash
    with pytest.raises(DifflensError, match="unknown toy"):
        load("toy:spiral")
    with pytest.raises(DifflensError, match="key=value"):
        load("toy:circle:16")


def test_split_is_seeded_and_disjoint():
    ds = load("toy:gaussian:n=100,dim=2")
    train, held = ds.split(0.2, seed=3)
    assert (train.n, held.n) == (80, 20)
    assert not set(train.indices) & set(held.indices)
    again, _ = ds.split(0.2, seed=3)
    assert np.array_equal(train.indices, again.indices)
    assert np.allclose(held.rows(0, 20).numpy(), ds.take(held.indices).numpy())
    with pytest.raises(DifflensError, match="holdout"):
        ds.split(1.5)


def _write(name, content):
    def make(p):
        path = p / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.save(path, content)
        return path

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_write("x.npy", np.array([[1.0, np.nan]])), "sample 0 contains NaN"),
        (_write("x.npy", np.array([[1.0], [np.inf]])), "sample 1 contains NaN or Inf"),
        (_write("x.npy", np.zeros((0, 3))), "empty"),
        (_write("x.npy", b"not numpy"), "cannot read .npy"),
        (_write("x.npz", b"not a zip"), "cannot read .npz"),
        (_write("x.csv", b"1,2"), "unsupported file type"),
        (lambda p: p / "missing.npy", "no such file"),
        (lambda p: p, "no images"),
    ],
)
def test_bad_data_gives_one_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DifflensError, match=message):
        load(str(path))


def test_bad_scale_and_dtype():
    with pytest.raises(DifflensError, match="unknown --scale"):
        load("digits", scale="zscore")
    with pytest.raises(DifflensError, match="numeric"):
        Dataset(np.array([["a"]], dtype=object))
