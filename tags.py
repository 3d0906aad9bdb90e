"""Does the conditioning work? One small classifier per attribute (hair colour, eye colour, ...),
trained on real tagged faces, then the accuracy of each attribute on a conditional model's
samples: the share of generated images whose attribute the classifier reads as the one asked for.

    python tags.py train --data ./faces --labels faces.csv --out out/tags
    python tags.py score out/tags/classifiers.pt out/cgan-anime_hair/ckpt.pt [--n 1000]

train: one CNN per --labels column (four 3x3 conv stages, 32-64-128-256 channels, global average
pooling, a linear layer) at --res, Adam, cross-entropy weighted by inverse class frequency (the
samples are scored uniformly over the values, so rare values count as much as common ones), random
horizontal flips. Held out: a fixed tenth of the images (a seed-0 permutation of the image order),
never trained on; it reports accuracy and balanced accuracy (the mean over values of each value's
accuracy: what a classifier scores on samples drawn uniformly over values, if they looked real).
score: n samples of G_ema, each attribute drawn uniformly over its values independently (seeded),
classified at the classifiers' resolution; per attribute, the accuracy and its chance level.
A model trained on one column (classes as a plain list) is matched to the classifier whose values
are the same list. Nothing is downloaded; a run on anime_hair at 32x32 takes minutes on a CPU.
"""

import argparse
import importlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import UserError, load_images

HERE = os.path.dirname(os.path.abspath(__file__))


def classifier(n_values, width=32):
    """(B, 3, res, res) in [-1, 1] -> (B, n_values) logits."""
    layers, c_in = [], 3
    for c in (width, 2 * width, 4 * width, 8 * width):  # res -> res / 16
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True)]
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True), nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_values))


def as_attributes(classes):
    """ImageSet or checkpoint classes -> {name: values}; one column or subfolders: 'class'."""
    return dict(classes) if isinstance(classes, dict) else {"class": list(classes)}


def to_input(images):
    """(B, res, res, 3) uint8 -> (B, 3, res, res) float in [-1, 1], as the models train on."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@torch.no_grad()
def predict(net, x, batch=256):
    net.eval()
    return torch.cat([net(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def accuracies(pred, y, n_values):
    """-> (accuracy, balanced accuracy: the mean of each present value's accuracy)."""
    per_value = [
        (pred[y == v] == v).float().mean().item() for v in range(n_values) if (y == v).any()
    ]
    return (pred == y).float().mean().item(), float(np.mean(per_value))


def train(args):
    columns = args.label_columns.split(",") if args.label_columns else None
    data = load_images(args.data, args.res, labels=args.labels, label_columns=columns)
    attrs = as_attributes(data.classes)
    x = to_input(data.images)  # (N, 3, res, res)
    y = torch.as_tensor(data.labels).reshape(len(x), -1)  # (N, k)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    held, used = order[: len(x) // 10], order[len(x) // 10 :]
    print(
        f"{len(used)} training images, {len(held)} held out; {args.epochs} epochs at {args.res}px"
    )
    torch.manual_seed(args.seed)
    nets, report = {}, {}
    for j, (name, values) in enumerate(attrs.items()):
        net = classifier(len(values), args.width)
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        counts = torch.bincount(y[used, j], minlength=len(values)).float()
        weight = counts.sum() / (len(values) * counts.clamp_min(1))  # inverse frequency
        steps = args.epochs * (len(used) // args.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=max(steps, 1))
        for epoch in range(args.epochs):
            net.train()
            perm = used[torch.randperm(len(used))]
            for i in range(0, len(perm) - args.batch + 1, args.batch):
                idx = perm[i : i + args.batch]
                xb = x[idx]
                flip = torch.rand(len(xb)) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                loss = F.cross_entropy(net(xb), y[idx, j], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            acc, bal = accuracies(predict(net, x[held]), y[held, j], len(values))
            print(f"{name}: epoch {epoch + 1}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}")
        report[name] = dict(accuracy=acc, balanced=bal, values=len(values), chance=1 / len(values))
        nets[name] = net.state_dict()
        print(f"{name}: held-out accuracy {acc:.3f}, balanced {bal:.3f} ({len(values)} values)")
    state = dict(attrs=attrs, res=args.res, width=args.width, nets=nets, heldout=report)
    state["args"] = vars(args)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "classifiers.pt")
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"saved {path}")


@torch.no_grad()
def score(args):
    state = torch.load(args.classifiers, map_location="cpu", weights_only=True)
    sys.path.insert(0, HERE)
    import fid  # the checkpoint's model name

    name, _ = fid.read_checkpoint_header(args.ckpt)
    if name not in ("cgan", "biggan", "stylegan2_ada"):
        raise UserError(f"{args.ckpt} is a {name} checkpoint: tags.py scores conditional models")
    mod = importlib.import_module(name)
    G = mod.load_generator(args.ckpt)
    attrs = as_attributes(G.classes)
    if list(attrs) == ["class"]:  # one column: the classifier with the same values
        same = [a for a, values in state["attrs"].items() if values == attrs["class"]]
        if not same:
            raise UserError(f"{args.ckpt}'s classes match none of the classifiers' attributes")
        attrs = {same[0]: attrs["class"]}
    for a, values in attrs.items():
        if state["attrs"].get(a) != values:
            raise UserError(f"{args.ckpt}'s {a} values differ from the classifiers' (or none)")
    gen = torch.Generator().manual_seed(args.seed)
    y = torch.stack([torch.randint(len(v), (args.n,), generator=gen) for v in attrs.values()], 1)
    pred = {a: [] for a in attrs}
    nets = {}
    for a, values in attrs.items():
        nets[a] = classifier(len(values), state["width"])
        nets[a].load_state_dict(state["nets"][a])
    for i in range(0, args.n, 250):
        yb = y[i : i + 250]
        x = mod.generate(G, len(yb), seed=args.seed + i, y=yb if len(attrs) > 1 else yb[:, 0])
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().div(127.5).sub(1)  # as a saved PNG would be
        if x.shape[-1] != state["res"]:
            x = F.interpolate(
                x, size=state["res"], mode="area" if x.shape[-1] > state["res"] else "bilinear"
            )
        for a in attrs:
            pred[a].append(predict(nets[a], x))
    rows = {}
    for j, a in enumerate(attrs):
        acc = (torch.cat(pred[a]) == y[:, j]).float().mean().item()
        real = state["heldout"][a]
        rows[a] = dict(accuracy=acc, chance=1 / len(attrs[a]), real_balanced=real["balanced"])
        print(
            f"{name} {a}: {acc:.3f} of {args.n} samples read as asked (chance {1 / len(attrs[a]):.3f};"
            f" the classifier on held-out real faces: {real['balanced']:.3f} balanced)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=name, ckpt=args.ckpt, n=args.n, attributes=rows), f, indent=1)


def get_args(argv=None):
    p = argparse.ArgumentParser(prog="tags", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one classifier per attribute")
    t.add_argument("--data", required=True, help="image folder or .zip")
    t.add_argument("--labels", required=True, metavar="FILE.csv", help="file,attr1,attr2,... CSV")
    t.add_argument("--label-columns", metavar="A,B", help="the columns to classify; default: all")
    t.add_argument("--out", default="out/tags", help="folder for classifiers.pt")
    t.add_argument("--res", type=int, default=32, help="classifier resolution")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--width", type=int, default=32, help="channels of the first stage")
    t.add_argument("--lr", type=float, default=2e-3, help="peak of a one-cycle schedule")
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="attribute accuracy of a conditional model's samples")
    s.add_argument("classifiers", help="classifiers.pt from tags.py train")
    s.add_argument("ckpt", help="a cgan, biggan or stylegan2_ada checkpoint")
    s.add_argument("--n", type=int, default=1000, help="samples, uniform over each attribute")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = p.parse_args(argv)
    for k in ("res", "epochs", "batch", "width", "n"):
        if getattr(args, k, 1) < 1:
            p.error(f"--{k} must be at least 1")
    if args.cmd == "train" and (args.res < 16 or args.res & (args.res - 1)):
        p.error(f"--res {args.res}: a power of two from 16")
    return args


def main(argv=None):
    args = get_args(argv)
    try:
        for path in [getattr(args, "classifiers", None), getattr(args, "ckpt", None)]:
            if path and not os.path.isfile(path):
                raise UserError(f"{path} not found")
        train(args) if args.cmd == "train" else score(args)
    except UserError as e:
        sys.exit(f"tags: error: {e}")
    except KeyboardInterrupt:
        sys.exit("tags: interrupted")


if __name__ == "__main__":
    main()
