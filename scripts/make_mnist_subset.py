#!/usr/bin/env python3
"""Make the small MNIST subset committed under pipelines/data/mnist/.

Takes the first 5,000 training digits and the first 1,000 test digits of the full MNIST
(IDX files, plain or gzip) and writes them as the four standard gzip IDX files, with gzip
mtime 0 and no stored file name so that running this again gives identical bytes. Also
writes a README.md with provenance and class counts.

Usage:
    python3 scripts/make_mnist_subset.py [SOURCE_DIR] [OUT_DIR]

Defaults: SOURCE_DIR = ../shared/data/mnist (relative to the repository root),
OUT_DIR = pipelines/data/mnist. Standard library only.
"""

import gzip
import io
import os
import struct
import sys

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
SPLITS = (("train", 5000), ("t10k", 1000))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_raw(path):
    """Bytes of path, gunzipped when they start with the gzip magic."""
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def find(src, name):
    """src/name or src/name.gz, whichever exists (plain first)."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(src, candidate)
        if os.path.isfile(path):
            return path
    sys.exit(f"error: neither {name} nor {name}.gz found in {src}")


def parse_idx(path, magic):
    """(dims, payload) of an unsigned-byte IDX file, checked like the Rust loader does."""
    data = read_raw(path)
    ndims = magic & 0xFF
    header_len = 4 + 4 * ndims
    if len(data) < header_len:
        sys.exit(f"error: {path}: truncated header, expected {header_len} bytes, found {len(data)}")
    found, *dims = struct.unpack(f">{1 + ndims}I", data[:header_len])
    if found != magic:
        sys.exit(f"error: {path}: bad magic 0x{found:08x}, expected 0x{magic:08x}")
    payload_len = 1
    for d in dims:
        payload_len *= d
    if len(data) != header_len + payload_len:
        sys.exit(f"error: {path}: expected {header_len + payload_len} bytes, found {len(data)}")
    return dims, data[header_len:]


def write_gz(path, raw):
    """gzip with mtime 0 and an empty stored name: same input, same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def subset(src, out, prefix, n):
    """Write the first n items of one split; returns (class counts, {file name: size})."""
    img_name = f"{prefix}-images-idx3-ubyte"
    lab_name = f"{prefix}-labels-idx1-ubyte"
    (count, rows, cols), pixels = parse_idx(find(src, img_name), IMAGES_MAGIC)
    (lcount,), labels = parse_idx(find(src, lab_name), LABELS_MAGIC)
    if count != lcount:
        sys.exit(f"error: {prefix}: {count} images but {lcount} labels")
    if n > count:
        sys.exit(f"error: {prefix}: asked for {n} items, source has {count}")
    labels = labels[:n]
    if max(labels) > 9:
        sys.exit(f"error: {prefix}: label {max(labels)} out of range 0..=9")
    images = struct.pack(">4I", IMAGES_MAGIC, n, rows, cols) + pixels[: n * rows * cols]
    label_bytes = struct.pack(">2I", LABELS_MAGIC, n) + labels
    sizes = {}
    for name, raw in ((img_name, images), (lab_name, label_bytes)):
        path = os.path.join(out, name + ".gz")
        write_gz(path, raw)
        sizes[name + ".gz"] = os.path.getsize(path)
    counts = [labels.count(c) for c in range(10)]
    return counts, sizes


def readme(results, command):
    """Provenance and contents of the subset, as Markdown."""
    lines = [
        "# MNIST subset",
        "",
        "A small slice of the MNIST handwritten digits, committed so that the example",
        "pipelines and tests run without the full data set.",
        "",
        "- **Contents:** the first 5,000 training digits and the first 1,000 test digits,",
        "  in their original order, 28x28 greyscale, labels 0-9.",
        "- **Format:** the four standard gzip IDX files with the standard names",
        "  (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,",
        "  `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`), compressed with",
        "  gzip level 9, mtime 0 and no stored name, so the bytes are reproducible",
        "  (given the same zlib; the decompressed IDX bytes are identical regardless).",
        "- **Source:** the MNIST database by Yann LeCun and Corinna Cortes",
        "  (http://yann.lecun.com/exdb/mnist/), licensed CC BY-SA 3.0",
        "  (https://creativecommons.org/licenses/by-sa/3.0/). This subset is a derivative",
        "  work under the same licence.",
        "",
        "## How it was made",
        "",
        "From the repository root, with the full MNIST in `../shared/data/mnist`:",
        "",
        "```",
        command,
        "```",
        "",
        "## Class counts",
        "",
        "| split | items | " + " | ".join(str(c) for c in range(10)) + " |",
        "|---|---|" + "---|" * 10,
    ]
    for split, n, counts, _ in results:
        lines.append(f"| {split} | {n} | " + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "## Files", "", "| file | bytes |", "|---|---|"]
    for _, _, _, sizes in results:
        for name, size in sizes.items():
            lines.append(f"| `{name}` | {size} |")
    return "\n".join(lines) + "\n"


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "..", "shared", "data", "mnist")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "pipelines", "data", "mnist")
    os.makedirs(out, exist_ok=True)
    results = []
    for prefix, n in SPLITS:
        counts, sizes = subset(src, out, prefix, n)
        results.append((prefix, n, counts, sizes))
        print(f"{prefix}: {n} items, class counts {counts}, files {sizes}")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme(results, "python3 scripts/make_mnist_subset.py"))


if __name__ == "__main__":
    main()
