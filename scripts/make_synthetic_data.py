"""Synthetic CIFAR-10 and SVHN files at the real datasets' sizes and formats, for timing
the ResNet `*_cpu` pipelines on a machine without the data (no network here).

Each class is a fixed random low-frequency colour pattern; each image blends its class's
pattern with one of many class-free background patterns (the class's share drawn per
image), shifts the blend by a few pixels and adds noise. Learnable but not separable, like
real images at this budget: on 4,000 training images a nearest-centroid rule scores 64% on
the test batch, and `icn_cifar10_cpu` (ResNet-32, 4 epochs) ends at 69% test error. The
first version of this script (the class pattern alone, light noise) was separable: 0%
error, which no real data set gives. Seeded: the same files every run.

    pip install numpy scipy
    python3 scripts/make_synthetic_data.py --cifar10 data/cifar-10-batches-bin --svhn data/svhn

Sizes are the real ones (CIFAR-10: 5 x 10,000 + 10,000; SVHN: 73,257 train, 531,131
extra, 26,032 test); --scale shrinks every file for a quick check.
"""
import argparse
import os

import numpy as np


BACKGROUNDS = 64
"""Class-free patterns mixed into every image."""

CLASS_SHARE = (0.1, 0.4)
"""Range of the class pattern's weight in an image; the background has the rest."""

NOISE = 45.0
"""Standard deviation of the pixel noise, on the 0..255 scale."""


def patterns(rng, count):
    """`count` 32x32x3 patterns: 4x4 random colour grids, upsampled."""
    coarse = rng.uniform(40, 215, size=(count, 4, 4, 3))
    fine = coarse.repeat(8, axis=1).repeat(8, axis=2)
    return fine.astype(np.float32)


def images(rng, pats, backs, labels):
    """uint8 N x 32 x 32 x 3: a blend of each label's pattern and a random background,
    rolled by up to 3 pixels per image, plus noise."""
    out = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for start in range(0, len(labels), 10000):
        lab = labels[start:start + 10000]
        share = rng.uniform(*CLASS_SHARE, size=(len(lab), 1, 1, 1)).astype(np.float32)
        x = share * pats[lab] + (1 - share) * backs[rng.integers(0, len(backs), size=len(lab))]
        shifts = rng.integers(-3, 4, size=(len(lab), 2))
        for i, (dy, dx) in enumerate(shifts):
            x[i] = np.roll(x[i], (int(dy), int(dx)), axis=(0, 1))
        x = x + rng.normal(0, NOISE, size=x.shape)
        out[start:start + len(lab)] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def cifar10(path, rng, scale):
    os.makedirs(path, exist_ok=True)
    pats, backs = patterns(rng, 10), patterns(rng, BACKGROUNDS)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = max(10, int(10000 * scale))
        labels = rng.integers(0, 10, size=n)
        x = images(rng, pats, backs, labels)
        # one record: the label byte, then 1024 red, 1024 green, 1024 blue bytes
        rec = np.empty((n, 3073), dtype=np.uint8)
        rec[:, 0] = labels
        rec[:, 1:] = x.transpose(0, 3, 1, 2).reshape(n, 3072)
        rec.tofile(os.path.join(path, name))
        print(f"{path}/{name}: {n} images")


def svhn(path, rng, scale):
    from scipy.io import savemat

    os.makedirs(path, exist_ok=True)
    pats, backs = patterns(rng, 10), patterns(rng, BACKGROUNDS)
    for name, size in [("train_32x32.mat", 73257), ("extra_32x32.mat", 531131), ("test_32x32.mat", 26032)]:
        n = max(10, int(size * scale))
        labels = rng.integers(0, 10, size=n)
        x = images(rng, pats, backs, labels)
        # the .mat layout: X is 32 x 32 x 3 x N, y is N x 1 with digit 0 stored as 10
        y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(n, 1)
        savemat(os.path.join(path, name), {"X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)), "y": y}, do_compression=False)
        print(f"{path}/{name}: {n} images")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar10", help="folder for the CIFAR-10 binary batches")
    ap.add_argument("--svhn", help="folder for the SVHN .mat files")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not (a.cifar10 or a.svhn):
        ap.error("nothing to write: give --cifar10 and/or --svhn")
    rng = np.random.default_rng(a.seed)
    if a.cifar10:
        cifar10(a.cifar10, rng, a.scale)
    if a.svhn:
        svhn(a.svhn, rng, a.scale)


if __name__ == "__main__":
    main()
