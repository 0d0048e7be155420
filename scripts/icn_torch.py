"""Softmax ICN (introspective convolutional networks, Eq. 9) in plain PyTorch, written the
way a PyTorch user would write it and independent of pipe's code: the reference that tells
a method problem from an implementation problem.

It trains on the same data split as a pipe run (the train / validation / test sets that
run's `load` stage wrote into the store), with the same net, loss, synthesis and schedule,
and prints the validation and test error of every round and of the round chosen on
validation.

    pipe run pipelines/compare_mnist_2000_cpu.toml --set data.path=../shared/data/mnist
    python3 scripts/icn_torch.py --store artifacts --run RUN_ID --method icn --seed 0
    python3 scripts/icn_torch.py --store artifacts --run RUN_ID --method baseline --seed 0

RUN_ID is any run (or sweep member) whose `load` stage made the split (`pipe ls`). With
--json FILE it also writes one JSON document with every round's numbers.

Protocol defaults (issue 11): CNN4 64/128/256/512, 5x5 stride 2, LeakyReLU 0.2, linear head;
SGD lr 0.025 momentum 0.9, batch 64; round 0 = 5 epochs of cross-entropy; rounds 1..8 =
synthesize 50 pseudo-negatives per class from p0 = N(0, 0.3^2) by Adam on x (lr 0.01,
betas 0.5 / 0.999, fresh per batch, clip to [-1, 1] after each step) until f_k(x) > 0 or
200 steps, add them to every earlier round's, then 5 epochs of
(1 - alpha) CE(real) + alpha softplus(f_k(pseudo-negative)) summed over the batch and
divided by the batch size, alpha 0.5, pseudo-negatives shuffled in with the data (the
paper's union). The baseline trains plain cross-entropy every round, the same epochs.
"""
import argparse
import json
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- data from the pipe store

DTYPES = {"U8": torch.uint8, "U32": torch.int32, "F32": torch.float32, "I64": torch.int64}


def read_safetensors(path):
    """A safetensors file as {name: tensor}: 8-byte header length, JSON header, data."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[meta["dtype"]])
        out[name] = t.reshape(meta["shape"])
    return out


def load_split(store, run_id):
    """(train, validation, test) as (images in [-1, 1], labels) from a run's load stage."""
    runs = sorted(p for p in (Path(store) / "runs").glob("*.json") if p.stem.startswith(run_id))
    if len(runs) != 1:
        sys.exit(f"error: --run {run_id}: {len(runs)} matching run records in {store}/runs")
    record = json.loads(runs[0].read_text())
    load = next((s for s in record["stages"] if s["kind"] == "load"), None)
    if load is None:
        sys.exit(f"error: run {record['id']} has no load stage")
    sets = []
    for name in ("train", "validation", "test"):
        digest = load["outputs"][f"{name}.safetensors"]["digest"]
        t = read_safetensors(Path(store) / "objects" / digest[:2] / digest[2:])
        x = t["images"].float() / 127.5 - 1.0
        sets.append((x, t["labels"].long()))
    return sets


# ---------------------------------------------------------------- the net and the loss

def he_init(net):
    """pipe's initialization: He-normal with the LeakyReLU gain on convolutions, N(0, 1/fan_in)
    on the linear layer, zero biases (PyTorch's default draws weights about 2.4x smaller)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, m.in_features ** -0.5)
            nn.init.zeros_(m.bias)


def cnn4(num_classes=10, width=1.0, slope=0.2):
    layers, c_in = [], 1
    for c in (64, 128, 256, 512):
        c = max(1, round(c * width))
        layers += [nn.Conv2d(c_in, c, 5, stride=2, padding=2), nn.LeakyReLU(slope)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 2 * 2, num_classes))


def icn_loss(logits, labels, negative, alpha):
    """Eq. 9 on a mixed batch: real samples softmax CE, pseudo-negatives of class k
    ln(1 + exp(f_k)); weighted (1 - alpha) and alpha, summed, over the batch size."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    f_k = logits.gather(1, labels[:, None])[:, 0]
    per_sample = torch.where(negative, alpha * F.softplus(f_k), (1 - alpha) * ce)
    return per_sample.sum() / len(labels)


# ---------------------------------------------------------------- synthesis

def synthesize(net, per_class, gen, args):
    """per_class pseudo-negatives of every class: ascent on f_k from p0 noise, each sample
    stopped at the first step where the rule holds (or after max_steps)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    classes = torch.arange(10).repeat_interleave(per_class)
    x = (torch.randn(len(classes), 1, 28, 28, generator=gen) * args.init_std).clamp(-1, 1)
    done = torch.zeros(len(classes), dtype=torch.bool)
    steps = torch.zeros(len(classes), dtype=torch.long)
    x = x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=args.synth_lr, betas=(0.5, 0.999))
    for step in range(args.max_steps + 1):
        logits = net(x)
        f_k = logits.gather(1, classes[:, None])[:, 0]
        if args.stop == "classified":
            holds = f_k > 0
        else:  # argmax: the weaker rule, for comparison
            holds = logits.argmax(1) == classes
        done = done | holds.detach()
        if done.all() or step == args.max_steps:
            break
        opt.zero_grad()
        (-f_k).sum().backward()
        x.grad[done] = 0  # a stopped sample stays where its rule first held
        frozen = x.detach()[done].clone()
        opt.step()
        with torch.no_grad():
            x[done] = frozen
            x.clamp_(-1, 1)
        steps += (~done).long()
    with torch.no_grad():
        f_final = net(x).gather(1, classes[:, None])[:, 0]
    for p in net.parameters():
        p.requires_grad_(True)
    net.train()
    return x.detach(), classes, steps, f_final


# ---------------------------------------------------------------- training and evaluation

def error(net, x, y):
    net.eval()
    with torch.no_grad():
        wrong = sum((net(x[i : i + 1000]).argmax(1) != y[i : i + 1000]).sum().item() for i in range(0, len(y), 1000))
    net.train()
    return wrong / len(y)


def train_epochs(net, opt, real_x, real_y, neg_x, neg_y, epochs, alpha, gen, args):
    """Union sampling: every real sample and pseudo-negative once per epoch, shuffled
    together. Balanced: each batch half real, half pseudo-negatives drawn with weight
    decay^(age in rounds)."""
    n_real = len(real_y)
    x = torch.cat([real_x, neg_x]) if neg_x is not None else real_x
    y = torch.cat([real_y, neg_y]) if neg_y is not None else real_y
    negative = torch.zeros(len(y), dtype=torch.bool)
    negative[n_real:] = True
    for _ in range(epochs):
        if args.sampling == "balanced" and neg_x is not None:
            half = args.batch // 2
            order = torch.randperm(n_real, generator=gen)
            batches = []
            for i in range(0, n_real, half):
                reals = order[i : i + half]
                negs = n_real + torch.multinomial(args.neg_weights, len(reals), replacement=True, generator=gen)
                batches.append(torch.cat([reals, negs]))
        else:
            order = torch.randperm(len(y), generator=gen)
            batches = [order[i : i + args.batch] for i in range(0, len(y), args.batch)]
        for b in batches:
            opt.zero_grad()
            loss = icn_loss(net(x[b]), y[b], negative[b], alpha)
            loss.backward()
            opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="artifacts")
    ap.add_argument("--run", required=True, help="id (or prefix) of a pipe run whose load stage made the split")
    ap.add_argument("--method", choices=["icn", "baseline"], default="icn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5, help="round 0")
    ap.add_argument("--epochs-per-round", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.025)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--synth-lr", type=float, default=0.01)
    ap.add_argument("--init-std", type=float, default=0.3)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--stop", choices=["classified", "argmax"], default="classified")
    ap.add_argument("--sampling", choices=["union", "balanced"], default="union")
    ap.add_argument("--recency-decay", type=float, default=0.5)
    ap.add_argument("--init", choices=["torch", "he"], default="torch",
                    help="torch: PyTorch's default init (what a user gets); he: He-normal with the "
                         "LeakyReLU gain and zero biases, the scheme pipe uses (different draws)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write every round's numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    (tx, ty), (vx, vy), (sx, sy) = load_split(args.store, args.run)
    net = cnn4(width=args.width)
    if args.init == "he":
        he_init(net)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    t0 = time.time()
    train_epochs(net, opt, tx, ty, None, None, args.epochs, 0.0, gen, args)
    rounds = [{"round": 0, "validation_error": error(net, vx, vy), "test_error": error(net, sx, sy)}]
    print(f"round 0: val {100 * rounds[0]['validation_error']:.2f}%  test {100 * rounds[0]['test_error']:.2f}%", flush=True)
    neg_x, neg_y, made_in = None, None, []
    for t in range(1, args.rounds + 1):
        row = {"round": t}
        if args.method == "icn":
            x, c, steps, f = synthesize(net, args.per_class, gen, args)
            row.update(mean_steps=steps.float().mean().item(), mean_f_k=f.mean().item(), positive=(f > 0).float().mean().item())
            neg_x = x if neg_x is None else torch.cat([neg_x, x])
            neg_y = c if neg_y is None else torch.cat([neg_y, c])
            made_in += [t] * len(c)
            args.neg_weights = torch.tensor([args.recency_decay ** (t - r) for r in made_in], dtype=torch.float64)
            alpha = args.alpha
        else:
            alpha = 0.0  # plain cross-entropy: what a user trains without introspection
        train_epochs(net, opt, tx, ty, neg_x, neg_y, args.epochs_per_round, alpha, gen, args)
        row.update(validation_error=error(net, vx, vy), test_error=error(net, sx, sy))
        rounds.append(row)
        extra = f"  steps {row['mean_steps']:.1f}  f_k {row['mean_f_k']:.2f}" if "mean_steps" in row else ""
        print(f"round {t}: val {100 * row['validation_error']:.2f}%  test {100 * row['test_error']:.2f}%{extra}", flush=True)
    best = min(rounds, key=lambda r: (r["validation_error"], r["round"]))
    print(f"selected on validation: round {best['round']} (val {100 * best['validation_error']:.2f}%, test {100 * best['test_error']:.2f}%)  {time.time() - t0:.0f}s")
    if args.json:
        doc = {"args": {k: v for k, v in vars(args).items() if k != "neg_weights"}, "rounds": rounds, "selected": best, "seconds": time.time() - t0}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
