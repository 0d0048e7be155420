"""Synthetic CIFAR-10 and SVHN files at the real datasets' sizes and formats, for timing
the ResNet `*_cpu` pipelines on a machine without the data (no network here).

Each class is a fixed random low-frequency colour pattern; each image is its class's
pattern, shifted by a few pixels, plus noise: learnable, so training, synthesis and its
stop rules behave as on images rather than on pure noise. Seeded: the same files every run.

    pip install numpy scipy
    python3 scripts/make_synthetic_data.py --cifar10 data/cifar-10-batches-bin --svhn data/svhn

Sizes are the real ones (CIFAR-10: 5 x 10,000 + 10,000; SVHN: 73,257 train, 531,131
extra, 26,032 test); --scale shrinks every file for a quick check.
"""
import argparse
import os

import numpy as np


def patterns(rng, classes=10):
    """One 32x32x3 pattern per class: a 4x4 random colour grid, upsampled and smoothed."""
    coarse = rng.uniform(40, 215, size=(classes, 4, 4, 3))
    fine = coarse.repeat(8, axis=1).repeat(8, axis=2)
    return fine.astype(np.float32)


def images(rng, pats, labels):
    """uint8 N x 32 x 32 x 3: each label's pattern rolled by up to 3 pixels, plus noise."""
    out = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for start in range(0, len(labels), 10000):
        lab = labels[start:start + 10000]
        x = pats[lab]
        dy, dx = rng.integers(-3, 4, size=2)
        x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
        x = x + rng.normal(0, 25, size=x.shape)
        out[start:start + len(lab)] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def cifar10(path, rng, scale):
    os.makedirs(path, exist_ok=True)
    pats = patterns(rng)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = max(10, int(10000 * scale))
        labels = rng.integers(0, 10, size=n)
        x = images(rng, pats, labels)
        # one record: the label byte, then 1024 red, 1024 green, 1024 blue bytes
        rec = np.empty((n, 3073), dtype=np.uint8)
        rec[:, 0] = labels
        rec[:, 1:] = x.transpose(0, 3, 1, 2).reshape(n, 3072)
        rec.tofile(os.path.join(path, name))
        print(f"{path}/{name}: {n} images")


def svhn(path, rng, scale):
    from scipy.io import savemat

    os.makedirs(path, exist_ok=True)
    pats = patterns(rng)
    for name, size in [("train_32x32.mat", 73257), ("extra_32x32.mat", 531131), ("test_32x32.mat", 26032)]:
        n = max(10, int(size * scale))
        labels = rng.integers(0, 10, size=n)
        x = images(rng, pats, labels)
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
