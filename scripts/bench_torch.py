"""The PyTorch side of `pipe bench`: the same four workloads, written as a user would
write them in PyTorch, on the same cores. Prints one JSON object per workload:
{"name", "per_s", "unit", "batch"}.

    python3 scripts/bench_torch.py --seconds 3 --threads 2 [--only cnn4_train,...]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cnn4():
    layers, c_in = [], 1
    for c in (64, 128, 256, 512):
        layers += [nn.Conv2d(c_in, c, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 2 * 2, 10))


class Block(nn.Module):
    """CIFAR ResNet basic block with the parameter-free option-A shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        s = x[:, :, ::2, ::2] if self.stride == 2 else x
        if self.pad:
            s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + s)


def resnet32():
    layers, c_in = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for i, c in enumerate((16, 32, 64)):
        for b in range(5):
            layers.append(Block(c_in, c, 2 if i > 0 and b == 0 else 1))
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def train_step(net, shape, batch):
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, *shape) * 2 - 1
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        return batch

    return step


def synthesis_step(net, batch):
    for p in net.parameters():
        p.requires_grad_(False)
    x = (torch.randn(batch, 1, 28, 28) * 0.3).clamp(-1, 1).requires_grad_(True)
    k = torch.arange(batch) % 10
    opt = torch.optim.Adam([x], lr=0.01, betas=(0.5, 0.999))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = net(x)
        (-logits.gather(1, k[:, None]).sum()).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
        return batch

    return step


def fgsm(net, batch):
    for p in net.parameters():
        p.requires_grad_(False)
    x0 = torch.rand(batch, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (batch,))

    def step():
        x = x0.clone().requires_grad_(True)
        F.cross_entropy(net(x), y).backward()
        (x + 0.125 * x.grad.sign()).clamp(-1, 1)
        return batch

    return step


WORKLOADS = {
    "cnn4_train": ("image", 64, lambda: train_step(cnn4(), (1, 28, 28), 64)),
    "cnn4_synthesis": ("image-step", 200, lambda: synthesis_step(cnn4(), 200)),
    "cnn4_fgsm": ("image", 1000, lambda: fgsm(cnn4(), 1000)),
    "resnet32_train": ("image", 128, lambda: train_step(resnet32(), (3, 32, 32), 128)),
}


def measure(step, seconds):
    step()
    step()
    t, items = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        items += step()
    return items / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    only = [s for s in a.only.split(",") if s]
    for name, (unit, batch, make) in WORKLOADS.items():
        if only and name not in only:
            continue
        per_s = measure(make(), a.seconds)
        print(json.dumps({"name": name, "per_s": per_s, "unit": unit, "batch": batch, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
