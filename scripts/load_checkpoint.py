"""Load a pipe checkpoint into PyTorch: build the module of docs/checkpoints.md from the
net's settings, load the checkpoint's `model.` tensors with load_state_dict(strict=True),
and optionally print logits and the error on MNIST IDX files. Needs only torch: the
safetensors file is read by hand (8-byte header length, JSON header, raw data).

    pipe run pipelines/quickstart.toml --store /tmp/store
    pipe ls --store /tmp/store                                     # the run's id
    python3 scripts/load_checkpoint.py --store /tmp/store RUN:train/2 \\
        --mnist pipelines/data/mnist/t10k-images-idx3-ubyte.gz pipelines/data/mnist/t10k-labels-idx1-ubyte.gz

CHECKPOINT is RUN:STAGE (a run id or prefix, and a train stage; the net's settings come
from the stage's manifest in the store) or a checkpoint file, which then needs --net: the
net's settings as JSON (inline or a file), either the NetConfig object, e.g.
'{"arch": "cnn4", "norm": "none", "width": 0.5, "leaky_slope": 0.2, "channels": 1,
"height": 28, "image_width": 28, "num_classes": 10}', or the output of
`pipe show RUN:train/N --json` (its params.net).
"""
import argparse
import gzip
import json
import math
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "pipe-checkpoint/2, torch layout"
DTYPES = {"F32": torch.float32, "I64": torch.int64, "U32": torch.int32, "U8": torch.uint8}


# ---------------------------------------------------------------- the modules (docs/checkpoints.md)

def norm_layer(norm, c):
    """pipe's `batch` and `layer` norms: per-channel statistics over N, H, W (running ones
    in eval mode), or over C, H, W of each sample; a weight and bias per channel."""
    if norm == "batch":
        return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
    if norm == "layer":
        return nn.GroupNorm(1, c, eps=1e-5)
    raise ValueError(f"no norm module for {norm!r}")


class CNN4(nn.Module):
    """Four 5x5 convolutions, stride 2, padding 2 (with a bias, or without one and followed
    by a norm), each followed by LeakyReLU; a linear layer on torch.flatten(x, 1)."""

    def __init__(self, in_channels, height, image_width, num_classes, channels, leaky_slope, norm="none"):
        super().__init__()
        c_in = in_channels
        for i, c in enumerate(channels, 1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c, 5, stride=2, padding=2, bias=norm == "none"))
            if norm != "none":
                setattr(self, f"norm{i}", norm_layer(norm, c))
            c_in, height, image_width = c, (height - 1) // 2 + 1, (image_width - 1) // 2 + 1
        self.act = nn.LeakyReLU(leaky_slope)
        self.fc = nn.Linear(c_in * height * image_width, num_classes)

    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"conv{i}")(x)
            if hasattr(self, f"norm{i}"):
                x = getattr(self, f"norm{i}")(x)
            x = self.act(x)
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm, plus the option A shortcut, then ReLU."""

    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm_layer(norm, c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        s = x[:, :, ::2, ::2] if self.stride == 2 else x
        if self.extra > 0:  # zero channels, half before (rounded down), the rest after
            s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(y + s)


class ResNet32(nn.Module):
    """The CIFAR ResNet: a 3x3 stem, three stages of 5 basic blocks (stride 2 entering
    stages 2 and 3), global average pooling and a linear layer."""

    def __init__(self, in_channels, num_classes, channels, norm, blocks=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.norm1 = norm_layer(norm, channels[0])
        c_in = channels[0]
        for s, c in enumerate(channels, 1):
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(c_in, c, 2 if s > 1 and b == 0 else 1, norm))
                c_in = c
            setattr(self, f"layer{s}", nn.Sequential(*layer))
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def scaled(c, width):
    """A channel count times net.width as pipe rounds it: half away from zero, at least 1."""
    v = c * width
    return max(1, math.floor(v) + (1 if v - math.floor(v) >= 0.5 else 0))


def build(net):
    """The module of a NetConfig (a stage's params.net)."""
    if net["arch"] == "cnn4":
        channels = [scaled(c, net["width"]) for c in (64, 128, 256, 512)]
        return CNN4(net["channels"], net["height"], net["image_width"], net["num_classes"], channels, net["leaky_slope"], net["norm"])
    if net["arch"] == "resnet32":
        channels = [scaled(c, net["width"]) for c in (16, 32, 64)]
        return ResNet32(net["channels"], net["num_classes"], channels, net["norm"])
    sys.exit(f"error: unknown arch {net['arch']!r}")


# ---------------------------------------------------------------- files

def read_safetensors(path):
    """({name: tensor}, metadata) of a safetensors file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        tensors[name] = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, header.get("__metadata__", {})


def read_idx(path):
    """An MNIST IDX file (plain or .gz) as a uint8 tensor."""
    raw = (gzip.open if str(path).endswith(".gz") else open)(path, "rb").read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def from_store(store, spec):
    """(checkpoint path, stage params) of RUN:STAGE."""
    run_id, _, stage = spec.partition(":")
    runs = sorted(p for p in (Path(store) / "runs").glob("*.json") if p.stem.startswith(run_id))
    if len(runs) != 1:
        sys.exit(f"error: {spec}: {len(runs)} run records in {store}/runs start with {run_id!r}")
    record = json.loads(runs[0].read_text())
    found = next((s for s in record["stages"] if s["stage"] == stage), None)
    if found is None or "checkpoint.safetensors" not in found["outputs"]:
        sys.exit(f"error: {spec}: run {record['id']} has no train stage {stage!r}")
    manifest = json.loads((Path(store) / "stages" / f"{found['key']}.json").read_text())
    digest = found["outputs"]["checkpoint.safetensors"]["digest"]
    return Path(store) / "objects" / digest[:2] / digest[2:], manifest["params"]


def net_settings(arg):
    """A NetConfig from --net: inline JSON or a file, the object itself or a stage document."""
    text = Path(arg).read_text() if Path(arg).is_file() else arg
    doc = json.loads(text)
    for path in (("params", "net"), ("manifest", "params", "net"), ("net",)):
        d = doc
        for key in path:
            d = d.get(key) if isinstance(d, dict) else None
        if isinstance(d, dict) and "arch" in d:
            return d
    if "arch" in doc:
        return doc
    sys.exit("error: --net holds no NetConfig (an object with `arch`, or a stage document with params.net)")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("checkpoint", help="RUN:STAGE (with --store) or a checkpoint file (with --net)")
    ap.add_argument("--store", default="artifacts", help="the pipe store (default: artifacts)")
    ap.add_argument("--net", help="the net's settings as JSON, inline or a file (for a checkpoint file)")
    ap.add_argument("--mnist", nargs=2, metavar=("IMAGES", "LABELS"), help="IDX files to evaluate on")
    ap.add_argument("--positive", type=int, help="the positive class of a one-logit net (default: the stage's)")
    ap.add_argument("--show", type=int, default=3, help="print the logits of this many images (default: 3)")
    args = ap.parse_args()

    params = {}
    if args.net:
        path, net = Path(args.checkpoint), net_settings(args.net)
    elif ":" in args.checkpoint and not Path(args.checkpoint).exists():
        path, params = from_store(args.store, args.checkpoint)
        net = params["net"]
    else:
        sys.exit("error: a checkpoint file needs --net (or give RUN:STAGE with --store)")

    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        sys.exit(f"error: {path}: format {metadata.get('format')!r}, expected {FORMAT!r} (checkpoints without one predate the PyTorch layout: rerun the stage with a newer pipe)")
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model = build(net)
    model.load_state_dict(state, strict=True)
    model.eval()
    print(f"{path}: {type(model).__name__} {json.dumps(net)}; {len(state)} tensors loaded (strict), header {metadata.get('pipe')}")

    if not args.mnist:
        return
    images, labels = (read_idx(p) for p in args.mnist)
    x = (images.float() / 127.5 - 1.0).reshape(-1, net["channels"], net["height"], net["image_width"])
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)])
    for i in range(min(args.show, len(x))):
        print(f"image {i} (label {labels[i]}): logits {[round(v, 4) for v in logits[i].tolist()]}")
    if net["num_classes"] == 1:
        objective = params.get("objective", {})
        positive = args.positive if args.positive is not None else objective.get("positive")
        if positive is None:
            sys.exit("error: a one-logit net needs --positive (the class it says yes to)")
        wrong = (logits[:, 0] > 0) != (labels.long() == positive)
    else:
        wrong = logits.argmax(1) != labels.long()
    print(f"error on {len(x)} images: {wrong.sum().item()} wrong = {100 * wrong.float().mean().item():.2f}%")


if __name__ == "__main__":
    main()
