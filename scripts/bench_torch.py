"""The PyTorch side of `pipe bench`: the same workloads, written as a user would write
them in PyTorch, on the same cores. Prints one JSON object per workload:
{"name", "per_s", "unit", "batch"}.

    python3 scripts/bench_torch.py --seconds 3 --threads 2 [--only cnn4_train,...]

With --serve it reads "NAME SECONDS" lines on stdin and answers each with one JSON line,
keeping every workload it built (its net, optimizer and data), so that `pipe bench` can
alternate short turns of pipe and PyTorch on the same row: a machine whose speed drifts
then slows both sides alike.
"""
import sys
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cnn4(classes=10, norm=False):
    """The ICN/WINN MNIST net: four 5x5 stride-2 convolutions, LeakyReLU(0.2); with layer
    norm (GroupNorm with one group) after each convolution for WINN."""
    layers, c_in = [], 1
    for c in (64, 128, 256, 512):
        if norm:
            layers += [nn.Conv2d(c_in, c, 5, stride=2, padding=2, bias=False), nn.GroupNorm(1, c), nn.LeakyReLU(0.2)]
        else:
            layers += [nn.Conv2d(c_in, c, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 2 * 2, classes))


def norm2d(kind, c):
    return nn.BatchNorm2d(c) if kind == "bn" else nn.GroupNorm(1, c)


class Block(nn.Module):
    """CIFAR ResNet basic block with the parameter-free option-A shortcut."""

    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = norm2d(norm, c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = norm2d(norm, c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        s = x[:, :, ::2, ::2] if self.stride == 2 else x
        if self.pad:
            s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + s)


def resnet32(norm="bn", classes=10):
    layers, c_in = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), norm2d(norm, 16), nn.ReLU()], 16
    for i, c in enumerate((16, 32, 64)):
        for b in range(5):
            layers.append(Block(c_in, c, 2 if i > 0 and b == 0 else 1, norm))
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def winn64(classes=10):
    """WINN Table 5: eight 3x3 convolutions (32/64/64/128/128/256/256/512), layer norm after
    all but the first, Swish, 2x2 average pooling after every second, a linear head."""
    layers, c_in = [], 3
    for i, c in enumerate((32, 64, 64, 128, 128, 256, 256, 512)):
        layers.append(nn.Conv2d(c_in, c, 3, 1, 1))
        if i > 0:
            layers.append(nn.GroupNorm(1, c))
        layers.append(nn.SiLU())
        if i % 2 == 1:
            layers.append(nn.AvgPool2d(2))
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 4 * 4, classes))


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


def synthesis_step(net, shape, batch):
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = (torch.randn(batch, *shape) * 0.3).clamp(-1, 1).requires_grad_(True)
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


def fgsm(net, shape, batch):
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x0 = torch.rand(batch, *shape) * 2 - 1
    y = torch.randint(0, 10, (batch,))

    def step():
        x = x0.clone().requires_grad_(True)
        F.cross_entropy(net(x), y).backward()
        (x + 0.125 * x.grad.sign()).clamp(-1, 1)
        return batch

    return step


def critic_step(net, shape, batch, lam=10.0):
    """WINN's critic loss (Eq. 5): E_neg f - E_pos f + lambda E[(||grad f(xhat)|| - 1)^2],
    half positives and half pseudo-negatives per batch, Adam(1e-4, betas (0, 0.9))."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.0, 0.9))
    n = batch // 2
    pos = torch.rand(n, *shape) * 2 - 1
    neg = torch.rand(n, *shape) * 2 - 1

    def step():
        f = net(torch.cat([pos, neg])).squeeze(1)
        wass = f[n:].mean() - f[:n].mean()
        u = torch.rand(n, 1, 1, 1)
        xhat = (u * pos + (1 - u) * neg).requires_grad_(True)
        (g,) = torch.autograd.grad(net(xhat).sum(), xhat, create_graph=True)
        penalty = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        (wass + lam * penalty).backward()
        opt.step()
        return batch

    return step


MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
WORKLOADS = {
    "cnn4_train": ("image", 64, lambda: train_step(cnn4(), MNIST, 64)),
    "cnn4_synthesis": ("image-step", 200, lambda: synthesis_step(cnn4(), MNIST, 200)),
    "cnn4_fgsm": ("image", 1000, lambda: fgsm(cnn4(), MNIST, 1000)),
    "cnn4_ln_critic": ("image", 100, lambda: critic_step(cnn4(1, norm=True), MNIST, 100)),
    "resnet32_train": ("image", 128, lambda: train_step(resnet32("bn"), CIFAR, 128)),
    "resnet32_ln_train": ("image", 128, lambda: train_step(resnet32("ln"), CIFAR, 128)),
    "resnet32_synthesis": ("image-step", 200, lambda: synthesis_step(resnet32("bn"), CIFAR, 200)),
    "resnet32_fgsm": ("image", 1000, lambda: fgsm(resnet32("bn"), CIFAR, 1000)),
    "resnet32_ln_critic": ("image", 100, lambda: critic_step(resnet32("ln", 1), CIFAR, 100)),
    "winn64_train": ("image", 100, lambda: train_step(winn64(), (3, 64, 64), 100)),
}


def measure(step, seconds, warm=True):
    if warm:
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
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.serve:
        steps = {}
        for line in sys.stdin:
            name, seconds = line.split()
            unit, batch, make = WORKLOADS[name]
            warm = name not in steps
            if warm:
                steps[name] = make()
            per_s = measure(steps[name], float(seconds), warm)
            print(json.dumps({"name": name, "per_s": per_s, "unit": unit, "batch": batch, "torch": torch.__version__}), flush=True)
        return
    only = [s for s in a.only.split(",") if s]
    for name, (unit, batch, make) in WORKLOADS.items():
        if only and name not in only:
            continue
        per_s = measure(make(), a.seconds)
        print(json.dumps({"name": name, "per_s": per_s, "unit": unit, "batch": batch, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
