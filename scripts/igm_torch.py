"""The IGM cascade (introspective generative modeling, Lazarow, Jin & Tu, ICCV 2017) in plain
PyTorch, written the way a PyTorch user would write it and independent of pipe's code: the
reference a pipe IGM run (pipelines/igm_mnist_cpu.toml) is cross-checked against.

It trains on the same digits as a pipe run (the training set that run's `load` stage wrote
into the store; labels unused), and scores every round's working set with that run's
judge (its `train/judge` checkpoint) exactly as pipe's `quality` stage does, so the
per-round numbers compare with pipe's `quality/<t>` summaries.

    pipe run pipelines/igm_mnist_cpu.toml --store /tmp/im
    python3 scripts/igm_torch.py --store /tmp/im --run RUN_ID --rounds 30 --seed 0 --json igm.json
    python3 scripts/igm_torch.py --store /tmp/im --run RUN_ID --score-pipe   # metric check only

RUN_ID is the run (or a prefix of its id, `pipe ls`); it needs the `load` and `train/judge`
stages. Each round prints this script's numbers and, where the run has them, pipe's
(train loss, mean synthesis steps, Fréchet distance, Inception-style score). With
--score-pipe it trains nothing: it scores pipe's own working sets (synthesize/<t>) with
this script's quality code, which must reproduce pipe's quality/<t> numbers to rounding.

Protocol (defaults = pipelines/igm_mnist_cpu.toml):
- net: CNN4, four 5x5 stride-2 padding-2 convolutions with 32/64/128/256 channels (width 0.5),
  LeakyReLU 0.2, no norm, flatten, linear to one logit f(x); PyTorch's default init
  (--init he: He-normal with the LeakyReLU gain and zero biases, pipe's scheme);
- p0: each of the --working-set (500) samples N(0, 0.3^2) per pixel, clipped to [-1, 1];
- round t = 1..T: C_t continues from C_{t-1} (weights and SGD momentum buffers); one epoch of
  SGD (lr 0.01, momentum 0.9) over the digits, each batch 50 digits (a permutation) + 50
  pseudo-negatives drawn uniformly with replacement from the working set, BCE with logits
  (digits 1, pseudo-negatives 0), mean over the 100. Then the working set is replaced: each
  sample continues from its previous value by Adam on x (lr 0.01, betas 0.5 / 0.999, fresh
  state per batch of 100), ascending f_t(x), clipped to [-1, 1] after each step, stopping
  once f_t(x) > 0 (checked before each step) or after 500 steps;
- quality of a working set: the judge's last conv activation (after its LeakyReLU) averaged
  over positions as features; Fréchet distance between Gaussians fitted to the first 500
  samples' and the first 500 test digits' features (covariance over n - 1; symmetric form
  tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)); Inception-style score exp(E KL(p(y|x) || p(y)))
  of the judge's softmax on the samples.

Nothing guards training: a round whose epoch ends with a non-finite loss or weight stops
the run (recorded in --json as `diverged`), as pipe's train stage fails without `rollback`.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icn_torch import he_init, load_split  # noqa: E402  (pipe's init; the run's data split from the store)
from load_checkpoint import build, read_safetensors  # noqa: E402  (pipe's nets in PyTorch)


# ---------------------------------------------------------------- the pipe run in the store

def run_record(store, run_id):
    runs = sorted(p for p in (Path(store) / "runs").glob("*.json") if p.stem.startswith(run_id))
    if len(runs) != 1:
        sys.exit(f"error: --run {run_id}: {len(runs)} matching run records in {store}/runs")
    return json.loads(runs[0].read_text())


def stage(record, name):
    return next((s for s in record["stages"] if s["stage"] == name), None)


def stage_object(store, record, name, output):
    s = stage(record, name)
    if s is None or output not in s["outputs"]:
        return None
    digest = s["outputs"][output]["digest"]
    return Path(store) / "objects" / digest[:2] / digest[2:]


def load_judge(store, record):
    path = stage_object(store, record, "train/judge", "checkpoint.safetensors")
    if path is None:
        sys.exit(f"error: run {record['id']} has no train/judge checkpoint")
    s = stage(record, "train/judge")
    manifest = json.loads((Path(store) / "stages" / f"{s['key']}.json").read_text())
    tensors, _ = read_safetensors(path)
    judge = build(manifest["params"]["net"])
    judge.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    judge.eval()
    for p in judge.parameters():
        p.requires_grad_(False)
    return judge


def pipe_numbers(record, t):
    """pipe's train loss, mean synthesis steps, FID and IS of round t (None where absent)."""
    get = lambda name, key: (stage(record, name) or {}).get("summary", {}).get(key)
    return {
        "train_loss": get(f"train/{t}", "final_loss"),
        "mean_steps": get(f"synthesize/{t}", "mean_steps"),
        "frechet_distance": get(f"quality/{t}", "frechet_distance"),
        "inception_score": get(f"quality/{t}", "inception_score"),
    }


# ---------------------------------------------------------------- sample quality by the judge

@torch.no_grad()
def judge_outputs(judge, x, batch=500):
    """(features, logits): the last conv layer's activation averaged over positions."""
    feats, logits = [], []
    for i in range(0, len(x), batch):
        h = x[i : i + batch]
        for k in range(1, 5):
            h = judge.act(getattr(judge, f"conv{k}")(h))
        feats.append(h.mean((2, 3)))
        logits.append(judge.fc(torch.flatten(h, 1)))
    return torch.cat(feats).double(), torch.cat(logits).double()


def eigh(s):
    """Eigenvalues and eigenvectors of a symmetric matrix. LAPACK's divide-and-conquer
    (syevd, behind torch.linalg.eigh) can fail to converge on a rank-deficient matrix with
    clustered eigenvalues; the general solver (geev) is the fallback."""
    s = (s + s.T) / 2
    try:
        return torch.linalg.eigh(s)
    except torch.linalg.LinAlgError:
        values, vectors = torch.linalg.eig(s)
        # largest first, so orthonormalizing (QR) keeps the dominant eigenvectors as they
        # are and only straightens the near-null space
        values, order = values.real.sort(descending=True)
        vectors = torch.linalg.qr(vectors.real[:, order])[0]
        print(f"  (eigh did not converge on a {len(s)}x{len(s)} matrix of rank {torch.linalg.matrix_rank(s).item()}; used eig)", flush=True)
        return values, vectors


def sqrt_psd(s):
    values, vectors = eigh(s)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a, b):
    if not (a.isfinite().all() and b.isfinite().all()):
        return float("nan")
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)  # denominator n - 1
    r1 = sqrt_psd(s1)
    cross = eigh(r1 @ s2 @ r1)[0].clamp(min=0).sqrt().sum()
    return ((m1 - m2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross).item()


def inception_score(logits):
    p = logits.softmax(1)
    marginal = p.mean(0, keepdim=True)
    kl = torch.where(p > 0, p * (p / marginal).log(), torch.zeros_like(p)).sum(1)
    return kl.mean().exp().item()


def quality(judge, samples, real_features, count):
    feats, logits = judge_outputs(judge, samples[:count])
    return {"frechet_distance": frechet_distance(feats, real_features), "inception_score": inception_score(logits)}


# ---------------------------------------------------------------- the cascade

def cnn4(width=0.5, slope=0.2):
    layers, c_in = [], 1
    for c in (64, 128, 256, 512):
        c = max(1, round(c * width))
        layers += [nn.Conv2d(c_in, c, 5, stride=2, padding=2), nn.LeakyReLU(slope)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 2 * 2, 1))


def train_round(net, opt, digits, working, gen, half):
    """One epoch: every digit once, each batch of digits paired with as many working-set
    samples drawn uniformly with replacement. The mean loss over batches."""
    net.train()
    order = torch.randperm(len(digits), generator=gen)
    total, batches = 0.0, 0
    for i in range(0, len(digits), half):
        real = digits[order[i : i + half]]
        fake = working[torch.randint(len(working), (len(real),), generator=gen)]
        x = torch.cat([real, fake])
        y = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
        loss = F.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, batches = total + loss.item(), batches + 1
    return total / batches


def synthesize(net, start, args):
    """Each sample ascends f(x) from `start` by Adam until f(x) > 0 or max_steps steps.
    Returns the new samples and the number of steps each took."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    out, steps = [], []
    for i in range(0, len(start), args.synth_batch):
        x = start[i : i + args.synth_batch].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=args.synth_lr, betas=(0.5, 0.999), eps=1e-8)
        done = torch.zeros(len(x), dtype=torch.bool)
        taken = torch.zeros(len(x), dtype=torch.long)
        for step in range(args.max_steps + 1):
            active = (~done).nonzero()[:, 0]
            f = net(x[active])[:, 0]
            done[active[f.detach() > 0]] = True
            if done.all() or step == args.max_steps:
                break
            moving = ~done[active]
            opt.zero_grad()
            (-f[moving]).sum().backward()  # rows not moving get a zero gradient
            stopped = x.detach()[done].clone()
            opt.step()
            with torch.no_grad():
                x[done] = stopped  # Adam's momentum would move them; a stopped sample stays
                x.clamp_(-1, 1)
            taken += (~done).long()
        out.append(x.detach())
        steps.append(taken)
    for p in net.parameters():
        p.requires_grad_(True)
    return torch.cat(out), torch.cat(steps)


# ---------------------------------------------------------------- main

def fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--store", default="artifacts")
    ap.add_argument("--run", required=True, help="id (or prefix) of a pipe run with load and train/judge stages")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--working-set", type=int, default=500)
    ap.add_argument("--init-std", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=100, help="half digits, half pseudo-negatives")
    ap.add_argument("--synth-lr", type=float, default=0.01)
    ap.add_argument("--synth-batch", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--count", type=int, default=500, help="samples and test digits compared")
    ap.add_argument("--init", choices=["torch", "he"], default="torch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--score-pipe", action="store_true", help="only score pipe's own working sets with this script's metric")
    ap.add_argument("--json", help="also write every round's numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    record = run_record(args.store, args.run)
    (digits, _), _, (test, _) = load_split(args.store, record["id"])
    digits, test = digits.reshape(-1, 1, 28, 28), test.reshape(-1, 1, 28, 28)
    judge = load_judge(args.store, record)
    real_features, _ = judge_outputs(judge, test[: args.count])
    print(f"run {record['id']}: {len(digits)} digits, judge on {min(args.count, len(test))} test digits", flush=True)

    if args.score_pipe:
        rows = []
        for t in range(args.rounds + 1):
            path = stage_object(args.store, record, f"synthesize/{t}", "pseudo_negatives.safetensors")
            if path is None:
                break
            samples = read_safetensors(path)[0]["images"].float()
            q, p = quality(judge, samples, real_features, args.count), pipe_numbers(record, t)
            rows.append({"round": t, "torch": q, "pipe": p})
            print(f"round {t:2d}: FID {q['frechet_distance']:.4f} (pipe {fmt(p['frechet_distance'], '.4f')})  "
                  f"IS {q['inception_score']:.4f} (pipe {fmt(p['inception_score'], '.4f')})", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "run": record["id"], "rounds": rows}, indent=1))
        return

    net = cnn4()
    if args.init == "he":
        he_init(net)
    # one optimizer for the whole cascade: C_t starts from C_{t-1}'s weights and momentum
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    working = (torch.randn(args.working_set, 1, 28, 28, generator=gen) * args.init_std).clamp(-1, 1)

    t_start = time.time()
    q, p = quality(judge, working, real_features, args.count), pipe_numbers(record, 0)
    rows = [{"round": 0, **q, "pipe": p}]
    print(f"round  0: FID {q['frechet_distance']:8.4f} (pipe {fmt(p['frechet_distance'], '8.4f')})  "
          f"IS {q['inception_score']:.4f} (pipe {fmt(p['inception_score'], '.4f')})", flush=True)
    for t in range(1, args.rounds + 1):
        t0 = time.time()
        loss = train_round(net, opt, digits, working, gen, args.batch // 2)
        t1 = time.time()
        if not torch.isfinite(torch.tensor(loss)) or not all(p.isfinite().all() for p in net.parameters()):
            print(f"round {t:2d}: training diverged (mean loss {loss}); stopping", flush=True)
            rows.append({"round": t, "train_loss": loss, "diverged": True, "train_seconds": t1 - t0, "pipe": pipe_numbers(record, t)})
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "run": record["id"], "rounds": rows, "seconds": time.time() - t_start}, indent=1))
            break
        working, steps = synthesize(net, working, args)
        t2 = time.time()
        with torch.no_grad():
            f = net(working)[:, 0]
        q, p = quality(judge, working, real_features, args.count), pipe_numbers(record, t)
        row = {"round": t, "train_loss": loss, "nonfinite_samples": (~working.isfinite().flatten(1).all(1)).sum().item(), "mean_steps": steps.float().mean().item(), "max_steps_hit": (steps >= args.max_steps).sum().item(),
               "mean_f": f.mean().item(), "positive": (f > 0).float().mean().item(), **q,
               "train_seconds": t1 - t0, "synth_seconds": t2 - t1, "seconds": time.time() - t0, "pipe": p}
        rows.append(row)
        print(f"round {t:2d}: loss {loss:.4f} (pipe {fmt(p['train_loss'], '.4f')})  steps {row['mean_steps']:6.1f} (pipe {fmt(p['mean_steps'], '6.1f')})  "
              f"FID {q['frechet_distance']:8.4f} (pipe {fmt(p['frechet_distance'], '8.4f')})  "
              f"IS {q['inception_score']:.4f} (pipe {fmt(p['inception_score'], '.4f')})  "
              f"f>0 {100 * row['positive']:.0f}%  {t1 - t0:.1f}+{t2 - t1:.1f}s", flush=True)
        if args.json:  # after every round, so a stopped run keeps what it did
            Path(args.json).write_text(json.dumps({"args": vars(args), "run": record["id"], "rounds": rows, "seconds": time.time() - t_start}, indent=1))
    print(f"{rows[-1]['round']} of {args.rounds} rounds in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
