"""lib/synthetic_faces.py: deterministic, disjoint, balanced, and the label is in the expression,
not in the pixels."""

import numpy as np
import pytest
from PIL import Image

import data
from lib import errors
from lib import synthetic_faces as sf

FACES = data.RAFDB_CLASSES  # the demo's classes, in RAF-DB order


def _array(ds, i):
    return np.asarray(ds[i][0])


def test_classes_sizes_and_balance():
    ds = data.build_dataset("synthetic", None, "train", num_train=21, image_size=40)
    assert ds.classes == data.RAFDB_CLASSES == FACES and len(ds) == 21
    assert np.bincount(ds.targets).tolist() == [3] * 7
    image, label = ds[5]
    assert (
        isinstance(image, Image.Image)
        and image.mode == "RGB"
        and image.size == (40, 40)
        and label == 5
    )
    assert len(data.build_dataset("synthetic", None, "test", num_test=9)) == 9
    assert data.build_dataset("synthetic", None, "train", transform=lambda im: im.size)[0][0] == (
        64,
        64,
    )


def test_deterministic_per_seed_split_index():
    a = sf.SyntheticFaces(8, FACES, "train", seed=3, image_size=32)
    # size of the split does not matter
    b = sf.SyntheticFaces(30, FACES, "train", seed=3, image_size=32)
    assert all(np.array_equal(_array(a, i), _array(b, i)) for i in range(8))
    assert np.array_equal(_array(a, 7), _array(a, 7))  # order of access does not matter
    other_seed = sf.SyntheticFaces(8, FACES, "train", seed=4, image_size=32)
    test = sf.SyntheticFaces(8, FACES, "test", seed=3, image_size=32)
    for i in range(8):
        assert not np.array_equal(_array(a, i), _array(other_seed, i))
        assert not np.array_equal(_array(a, i), _array(test, i))


def test_train_and_test_are_disjoint():
    train = {_array(sf.SyntheticFaces(200, FACES, "train", 0, 24), i).tobytes() for i in range(200)}
    test = {_array(sf.SyntheticFaces(200, FACES, "test", 0, 24), i).tobytes() for i in range(200)}
    assert len(train) == 200 and len(test) == 200 and not train & test


def test_bad_options():
    with pytest.raises(errors.BadInputError, match="--split 'valid'"):
        data.build_dataset("synthetic", None, "valid")
    with pytest.raises(ValueError, match="empty"):
        data.build_dataset("synthetic", None, "test", num_test=0)
    with pytest.raises(TypeError, match="num_val"):
        data.build_dataset("synthetic", None, "train", num_val=3)
    with pytest.raises(IndexError):
        sf.SyntheticFaces(3, FACES, "train")[3]


def test_expression_is_a_local_change_with_the_nuisances_fixed():
    for seed in range(5):  # same generator state, different label: only the features move
        faces = [
            np.asarray(sf.draw_face(np.random.default_rng(seed), name, 64)).astype(int)
            for name in FACES
        ]
        for k in range(1, 7):
            changed = (np.abs(faces[k] - faces[0]).max(-1) > 0).mean()
            assert 0.002 < changed < 0.2, (seed, k, changed)


def test_raw_pixels_do_not_give_the_label_away():
    """Nearest class mean on raw pixels stays near chance (1/7): the nuisances dominate the
    pixels."""
    S = 32
    train, test = (
        sf.SyntheticFaces(420, FACES, "train", 0, S),
        sf.SyntheticFaces(210, FACES, "test", 0, S),
    )
    X = np.stack([_array(train, i).ravel() for i in range(len(train))]).astype(np.float32)
    Xt = np.stack([_array(test, i).ravel() for i in range(len(test))]).astype(np.float32)
    y, yt = np.array(train.targets), np.array(test.targets)
    means = np.stack([X[y == k].mean(0) for k in range(7)])  # (7, S*S*3)
    pred = ((Xt[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yt).mean() < 0.35
