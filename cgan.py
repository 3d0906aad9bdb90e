"""Conditional GAN: "Conditional Generative Adversarial Nets", Mehdi Mirza, Simon Osindero, 2014.
arXiv:1411.1784. On DCGAN's networks, with D conditioned by projection ("cGANs with Projection
Discriminator", Takeru Miyato, Masanori Koyama, 2018, arXiv:1802.05637).

Paper -> code
- G and D both see the class y; G's input is z joined to an embedding of y (sec. 3.2) -> Generator
- D conditioned by projection, D(x, y) = psi(phi(x)) + embed(y) . phi(x) (Miyato & Koyama
  eq. 3), phi = D's last 4x4 features, psi = DCGAN's last convolution      -> Discriminator
- the conditional minimax game (sec. 3.2, eq. 2), G maximising log D(G(z|y)) -> loss_d, loss_g
Projection rather than label maps concatenated to D's input: it is the form the optimal D takes
for a log-linear class model (Miyato & Koyama sec. 3), it beat concatenation on ImageNet (their
sec. 5), and it costs one embedding row per class instead of n_classes input channels.

Not from the paper: what changes results
- Instance noise N(0, sigma^2) on every image D sees, sigma falling linearly from --noise-std
  0.75 to 0 over --noise-kimg 1000, about half of the default run (Sonderby et al. 2016,
  arXiv:1610.04490; Arjovsky & Bottou 2017, arXiv:1701.04862 sec. 4)   -> noise_std, add_noise
- Soft labels: D's real targets from U[0.95, 1], fake targets from U[0, 0.05] (Salimans et al.
  2016, arXiv:1606.03498 sec. 3.4), --real-target, --fake-target        -> smoothed_targets
- An extra G step in an iteration whose loss_G exceeds --g-extra-threshold 2.0 (D(G(z)) below
  e^-2 = 0.14 on average; ganhacks tip 8)                                -> train
- LeakyReLU(--slope 0.1) in G and D, BatchNorm in both, reals and fakes in separate D passes so
  BatchNorm never mixes them (ganhacks tips 4, 5); z ~ N(0, I); G learns more slowly than D
  (--lr-g 1e-4, --lr-d 2e-4).
- Fakes take the labels of the real batch they are paired with, so G sees the data's class
  frequencies. D's class embedding starts like psi, N(0, 0.02); G's at N(0, 1), the scale of z;
  --embed-dim 50 (the paper maps y to 1000 units in an MLP). One class: no embedding, no
  projection, the same recipe unconditionally.
- Several attributes (--labels CSV, e.g. hair and eyes): the paper's one class y becomes k labels
  y_1..y_k, each with its own embedding (one table, each attribute's rows after the previous
  ones'). G's input is z joined to all k embeddings; D's projection is one inner product per
  attribute, summed, sum_i embed(y_i) . phi(x): Miyato & Koyama's log-linear p(y|x) with one term
  per attribute, p(y|x) = prod_i p(y_i|x)       -> label_embedding, Generator, Discriminator
  The training grid's rows are the first attribute's values, its columns the second's (one z
  per row, other attributes at their most frequent value); sampling draws any attribute --class
  does not name from its training frequencies                 -> attribute_grid, draw_labels
- BatchNorm gains start at N(1, 0.02), as in pytorch/examples' DCGAN (the paper gives only the
  weights' N(0, 0.02))                                                  -> init_weights
- Samples come from G_ema, a moving average of G's weights (half-life --ema-kimg, ramped up over
  the first 20x as many images, as StyleGAN2-ADA does).
Not from the paper: engineering
- bf16 autocast on GPUs, DDP, atomic checkpoints, resume: the plumbing block, as in every file.
  The extra-G-step decision uses loss_G averaged over DDP ranks, so all ranks take one branch.
Other projects' checkpoints: none is read (--init takes this file's own). No common
  conditional-GAN code builds these networks (DCGAN layers, z joined to a label embedding, a
  projection D with BatchNorm); eriklindernoren/PyTorch-GAN's cgan is an MLP,
  pfnet-research/sngan_projection (Chainer) a ResNet.

Usage
    python cgan.py                                    # built-in toy faces (6 hair colours), 64x64
    python cgan.py --data ./faces                     # a folder or .zip; class subfolders = labels
    python cgan.py --data ../shared/data/anime_hair --labels ../shared/data/anime_hair/labels.csv
    python cgan.py --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python cgan.py --data ./faces --resume --steps 60000   # continue out/cgan-faces
    torchrun --nproc_per_node=4 cgan.py --data ./faces
    python cgan.py --sample out/cgan-faces/ckpt.pt --n 64 [--class blonde] [--interp]
    python cgan.py --sample out/cgan-anime_hair/ckpt.pt --class hair=blonde,eyes=blue   # CSV tags
"""

import argparse
import contextlib
import copy
import io
import json
import math
import os
import re
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import Batches, UserError, load_images, make_grid, save_gif, save_grid, save_samples

MODEL = "cgan"


# --- model --------------------------------------------------------------------------------------


def check_res(res):
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")


def label_embedding(n_classes, dim):
    """One embedding table for k attributes of n_1..n_k values (n_classes an int for one, or the
    list of sizes), and each attribute's first row: attribute i, value v is row offsets[i] + v.
    The offsets are a non-persistent buffer, so the state dict is the single-attribute one's.
    One class: None (unconditional)."""
    sizes = [n_classes] if isinstance(n_classes, int) else list(n_classes)
    if sizes == [1]:
        return None, None
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)  # (k,)
    return nn.Embedding(sum(sizes), dim), offsets


def embed_labels(embed, offsets, y):
    """y (B,) for one attribute or (B, k) for k -> their embeddings (B, k, dim)."""
    return embed(y.reshape(len(y), -1) + offsets)


class Generator(nn.Module):
    """(z (B, z_dim), y (B,) or (B, k)) -> image (B, 3, res, res): DCGAN's G on z joined to the
    embeddings of the k labels (sec. 3.2). n_classes: the number of classes, or the list of each
    attribute's number of values. One class: no embedding, y ignored."""

    def __init__(self, res=64, z_dim=100, ch=64, n_classes=1, embed_dim=50, slope=0.1):
        super().__init__()
        self.res, self.z_dim, self.n_classes = res, z_dim, n_classes
        self.embed, offsets = label_embedding(n_classes, embed_dim)
        self.register_buffer("offsets", offsets, persistent=False)
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        c = min(ch * 2 ** (n_up - 1), ch * 16)
        c_in = z_dim + (len(offsets) * embed_dim if self.embed is not None else 0)
        first = nn.ConvTranspose2d(c_in, c, 4, 1, 0, bias=False)
        layers = [first, nn.BatchNorm2d(c), nn.LeakyReLU(slope, inplace=True)]
        for _ in range(n_up - 1):  # (B, c, s, s) -> (B, c/2, 2s, 2s)
            up = nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False)
            layers += [up, nn.BatchNorm2d(c // 2), nn.LeakyReLU(slope, inplace=True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.embed is not None:  # (B, z_dim) -> (B, z_dim + k * embed_dim)
            z = torch.cat([z, embed_labels(self.embed, self.offsets, y).flatten(1)], 1)
        return self.net(z[:, :, None, None])  # (B, c_in, 1, 1) -> (B, c, 4, 4) -> (B, 3, res, res)


class Discriminator(nn.Module):
    """(image (B, 3, res, res), y (B,) or (B, k)) -> logit (B,); DCGAN's D, no BatchNorm on the
    input layer. Projection (Miyato & Koyama eq. 3): logit = psi(h) + sum_i embed(y_i) . h, one
    inner product per attribute, h = the 4x4 features, psi = DCGAN's final 4x4 convolution (a
    linear map of h)."""

    def __init__(self, res=64, ch=64, n_classes=1, slope=0.1):
        super().__init__()
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        layers, c = [nn.Conv2d(3, ch, 4, 2, 1, bias=False), nn.LeakyReLU(slope, inplace=True)], ch
        for _ in range(n_down - 1):  # (B, c, s, s) -> (B, 2c, s/2, s/2), at most 16 * ch
            c2 = min(c * 2, ch * 16)
            down = nn.Conv2d(c, c2, 4, 2, 1, bias=False)
            layers += [down, nn.BatchNorm2d(c2), nn.LeakyReLU(slope, inplace=True)]
            c = c2
        self.features = nn.Sequential(*layers)
        self.psi = nn.Conv2d(c, 1, 4, 1, 0, bias=False)  # (B, c, 4, 4) -> (B, 1, 1, 1)
        self.embed, offsets = label_embedding(n_classes, c * 16)
        self.register_buffer("offsets", offsets, persistent=False)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)  # like psi, which maps the same h

    def forward(self, x, y=None):
        h = self.features(x)  # (B, c, 4, 4)
        logits = self.psi(h).flatten()  # (B,)
        if self.embed is not None:  # sum_i embed(y_i) . h = (sum_i embed(y_i)) . h
            e = embed_labels(self.embed, self.offsets, y).sum(1)  # (B, k, 16c) -> (B, 16c)
            logits = logits + (e * h.flatten(1)).sum(1)  # (B, 16c) . (B, 16c) -> (B,)
        return logits


def init_weights(m):  # DCGAN sec. 4: weights from N(0, 0.02)
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# --- losses -------------------------------------------------------------------------------------


def smoothed_targets(n, lo, hi, device="cpu"):
    """Soft labels, one per sample from U[lo, hi]: D is never asked for a certain 0 or 1, which
    keeps its logits (and G's gradients through them) from growing without bound."""
    return torch.empty(n, device=device).uniform_(lo, hi)


def loss_d(logits_real, logits_fake, t_real, t_fake):
    """-t log D(x) - (1 - t) log(1 - D(x)) on the reals plus the same on the fakes, on logits."""
    bce = F.binary_cross_entropy_with_logits
    return bce(logits_real, t_real) + bce(logits_fake, t_fake)


def loss_g(logits_fake):
    """Non-saturating: G maximises log D(G(z|y)) instead of minimising log(1 - D(G(z|y)))."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def noise_std(kimg, start, over_kimg):
    """Instance noise sigma after `kimg` thousand real images: linear from `start` to 0 at
    `over_kimg`. Early on it makes the real and fake distributions overlap, so D's gradient is
    informative where their supports would be disjoint (Arjovsky & Bottou 2017 sec. 4)."""
    return start * max(0.0, 1.0 - kimg / over_kimg) if over_kimg > 0 else 0.0


def add_noise(x, sigma):
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


# --- training -----------------------------------------------------------------------------------


def ema_beta(batch, ema_kimg):
    """Per-step decay whose half-life is ema_kimg thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


def ema_half_life(step, args):
    """--ema-kimg, ramped up: at most --ema-rampup of the thousands of images seen by `step`
    (StyleGAN2-ADA's ramp), so early G_ema follows G closely; --ema-rampup 0: no ramp-up."""
    seen = step * args.batch / 1000
    return min(args.ema_kimg, seen * args.ema_rampup) if args.ema_rampup else args.ema_kimg


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (BN statistics) are copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def mean_over_ranks(t):
    """A scalar tensor averaged over the DDP ranks, as a float (syncs the GPU); every rank calls
    it together."""
    if dist.is_initialized():
        t = t.detach().float().clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.item()


def train(args):
    check_res(args.res)
    run = Run(args)  # device, precision, DDP, seed, --resume: the plumbing block below
    args, device = run.args, run.device
    columns = args.label_columns.split(",") if args.label_columns else None
    data = load_images(
        args.data, args.res, verbose=run.rank == 0, labels=args.labels, label_columns=columns
    )
    batches = Batches(
        data, args.batch // run.world, device, args.seed, run.rank, run.world, args.flip
    )
    attrs = attributes(data.classes)  # [(name, values)]: one, or one per CSV column
    counts = class_counts(data.classes, data.labels)
    n_classes = [len(values) for _, values in attrs]
    G = Generator(args.res, args.z_dim, args.g_ch, n_classes, args.embed_dim, args.slope).to(device)
    D = Discriminator(args.res, args.d_ch, n_classes, args.slope).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # DCGAN sec. 4: Adam with beta1 0.5
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.5, 0.999))
    if run.ckpt is not None:  # a checkpoint without class counts: this data's
        run.ckpt.setdefault("class_counts", counts)
    # --resume loads each of these from the checkpoint; data with other classes is refused
    run.track(
        classes=data.classes,
        class_counts=counts,
        G=G,
        D=D,
        G_ema=G_ema,
        opt_G=opt_G,
        opt_D=opt_D,
        loader=batches,
    )
    scaler_G, scaler_D = run.scaler_G, run.scaler_D  # fp16 loss scaling (no-ops in bf16, fp32)
    G_train, D_train = run.wrap(G, D)  # DDP under torchrun, torch.compile with --compile
    z_fixed, y_fixed, cols, about = fixed_latents(data.classes, counts, args.z_dim, args.seed)
    z_fixed, y_fixed = z_fixed.to(device), y_fixed.to(device)
    if n_classes == [1]:
        about = "one class: training unconditionally (no embedding)"
    about = f"{len(data.labels)} images, {about}"

    def g_step(x_fake, y, sigma):
        """(2) update G: maximise log D(G(z|y)|y), on noisy fakes as D sees them (sec. 3.2)."""
        with run.autocast:
            loss_G = loss_g(D_train(add_noise(x_fake, sigma), y).float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(opt_G)
        scaler_G.update()
        return loss_G

    def grid():  # several attributes: one column per value of the second
        x = G_ema(z_fixed, y_fixed)
        return make_grid(x, nrow=cols) if cols else x

    for step in run.steps(grid=grid, about=about):
        x_real, y_real = next(batches)  # (B, 3, res, res) in [-1, 1], (B,) or (B, k) labels
        x_real = x_real.contiguous(memory_format=run.layout)
        sigma = noise_std(step * args.batch / 1000, args.noise_std, args.noise_kimg)
        z = torch.randn(x_real.shape[0], args.z_dim, device=device)

        # (1) update D: maximise log D(x|y) + log(1 - D(G(z|y)|y))  (sec. 3.2, eq. 2), with
        # instance noise on both batches and soft targets; the fakes take the reals' labels
        with run.autocast:
            x_fake = G_train(z, y_real)
            logits_real = D_train(add_noise(x_real, sigma), y_real)
            logits_fake = D_train(add_noise(x_fake.detach(), sigma), y_real)
            t_real = smoothed_targets(len(z), *args.real_target, device)
            t_fake = smoothed_targets(len(z), *args.fake_target, device)
            loss_D = loss_d(logits_real.float(), logits_fake.float(), t_real, t_fake)
        opt_D.zero_grad(set_to_none=True)
        scaler_D.scale(loss_D).backward()
        scaler_D.step(opt_D)
        scaler_D.update()

        loss_G = g_step(x_fake, y_real, sigma)  # (2) on the fakes D just scored: one G forward
        # (2') an extra G step on a fresh z while D wins clearly: loss_G above
        # --g-extra-threshold. DDP all-reduces G's gradients inside it, so every rank must take
        # the same branch: the decision is on loss_G averaged over ranks, whose .item() costs one
        # GPU sync a step (skipped when the threshold is inf)
        extra = math.isfinite(args.g_extra_threshold)
        extra = extra and mean_over_ranks(loss_G) > args.g_extra_threshold
        if extra:
            z = torch.randn(x_real.shape[0], args.z_dim, device=device)
            with run.autocast:
                x_fake = G_train(z, y_real)
            g_step(x_fake, y_real, sigma)

        update_ema(G_ema, G, ema_beta(args.batch, ema_half_life(step, args)))
        # g_extra: the fraction of steps with an extra G step; noise: the mean sigma, both over
        # the log interval
        run.log(
            loss_D=loss_D,
            loss_G=loss_G,
            d_real=logits_real.mean(),
            d_fake=logits_fake.mean(),
            g_extra=torch.tensor(float(extra), device=device),
            noise=torch.tensor(sigma, device=device),
        )
    return G_ema


# --- sampling -----------------------------------------------------------------------------------


def sample_z(n, z_dim, gen, truncation=None):
    """z ~ N(0, I); with truncation T, entries beyond |T| are redrawn until none are left."""
    z = torch.randn(n, z_dim, generator=gen)
    while truncation is not None and (bad := z.abs() > truncation).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    return z


def fixed_latents(classes, counts, z_dim, seed):
    """The training grid's z, labels, columns (None: 8 a row) and header. One attribute: a row per
    class, the same 8 z in every row, so that rows differ only by their label (one class: 64
    distinct z). Several: the first attribute's values down, the second's across, one z per row
    (attribute_grid)."""
    gen, attrs = torch.Generator().manual_seed(seed), attributes(classes)
    if len(attrs) > 1:
        y, cols, about = attribute_grid(classes, counts)
        return (
            torch.randn(len(attrs[0][1]), z_dim, generator=gen).repeat_interleave(cols, 0),
            y,
            cols,
            about,
        )
    values = attrs[0][1]
    if len(values) == 1:
        return (
            torch.randn(64, z_dim, generator=gen),
            torch.zeros(64, dtype=torch.long),
            None,
            "one class",
        )
    z = torch.randn(8, z_dim, generator=gen).repeat(len(values), 1)  # (8 * classes, z_dim)
    y = torch.arange(len(values)).repeat_interleave(8)
    return z, y, None, f"{len(values)} classes, grid rows top to bottom: {', '.join(values)}"


def class_counts(classes, labels):
    """The training images per value of each attribute, [[count per value] per attribute]: the
    frequencies draw_labels samples from and attribute_grid holds the other attributes at."""
    y = torch.as_tensor(labels).reshape(len(labels), -1)  # (N, k)
    return [
        torch.bincount(col, minlength=len(v)).tolist()
        for col, (_, v) in zip(y.T, attributes(classes))
    ]


def attributes(classes):
    """A checkpoint's classes as [(name, values)]: subfolders or one CSV column -> one attribute."""
    return list(classes.items()) if isinstance(classes, dict) else [("class", list(classes))]


def parse_class(classes, spec):
    """--class SPEC -> {attribute index: value index}. SPEC: a value of exactly one attribute
    ("blonde"; with one attribute also its index, "3"), or name=value pairs, any subset
    ("hair=blonde,eyes=blue")."""
    attrs = attributes(classes)
    names = [name for name, _ in attrs]
    if "=" not in spec:
        if len(attrs) == 1 and spec not in attrs[0][1] and spec.isdigit():
            if int(spec) < len(attrs[0][1]):
                return {0: int(spec)}
        found = [i for i, (_, values) in enumerate(attrs) if spec in values]
        if len(found) > 1:
            several = ", ".join(names[i] for i in found)
            why = f"a value of several attributes ({several}): name it, e.g. {names[found[0]]}="
            raise UserError(f"--class {spec}: {why}{spec}")
        if not found and len(attrs) == 1:
            values = ", ".join(attrs[0][1])
            raise UserError(f"--class {spec}: not one of this checkpoint's classes: {values}")
        if not found:
            each = "; ".join(f"{name}: {', '.join(values)}" for name, values in attrs)
            raise UserError(f"--class {spec}: not a value of any attribute ({each})")
        return {found[0]: attrs[found[0]][1].index(spec)}
    fixed = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name not in names:
            raise UserError(
                f"--class {spec}: no attribute '{name}' (attributes: {', '.join(names)})"
            )
        i = names.index(name)
        if i in fixed:
            raise UserError(f"--class {spec}: {name} is given twice")
        if value not in attrs[i][1]:
            raise UserError(
                f"--class {spec}: not one of the {name} values: {', '.join(attrs[i][1])}"
            )
        fixed[i] = attrs[i][1].index(value)
    return fixed


def draw_labels(classes, counts, n, gen, fixed=None):
    """n labels, (n,) for one attribute, (n, k) for several: the attributes in `fixed` ({attribute
    index: value index}) set, every other drawn i.i.d. from its training frequencies `counts`
    (each attribute's value counts)."""
    fixed, cols = fixed or {}, []
    for i, c in enumerate(counts):
        if i in fixed:
            cols.append(torch.full((n,), fixed[i], dtype=torch.long))
        else:
            p = torch.tensor(c, dtype=torch.float)
            cols.append(torch.multinomial(p, n, replacement=True, generator=gen))
    return cols[0] if len(attributes(classes)) == 1 else torch.stack(cols, 1)


def attribute_grid(classes, counts):
    """The training grid of several attributes: rows are the first attribute's values, columns the
    second's; a file repeats one z along each row, so a row differs only by the second label. Any
    further attribute is held at its most frequent value. -> y (rows * cols, k), cols, header."""
    attrs = attributes(classes)
    (down, down_values), (across, across_values) = attrs[:2]
    rows, cols = len(down_values), len(across_values)
    held = [c.index(max(c)) for c in counts]  # each attribute's most frequent value
    y = torch.tensor(held).repeat(rows * cols, 1)  # (rows * cols, k)
    y[:, 0], y[:, 1] = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)
    about = f"attributes {', '.join(name for name, _ in attrs)}; grid rows: {down}"
    about += f" ({', '.join(down_values)}), columns: {across} ({', '.join(across_values)})"
    about += "".join(f", {name}={values[i]}" for (name, values), i in zip(attrs[2:], held[2:]))
    return y, cols, about


ARCH = ("res", "z_dim", "g_ch", "d_ch", "embed_dim", "slope")  # the arguments that shape G and D


def read_weights(path, device="cpu"):
    """A checkpoint of this file as {"args": the sizes (ARCH), "G", "D", "G_ema", "classes",
    "class_counts"}: what load_generator and --init read."""
    ckpt = load_checkpoint(path, device)
    return dict(ckpt, args={k: ckpt["args"][k] for k in ARCH})


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema in eval mode, with .res, .z_dim, .classes and .class_counts for
    generate()."""
    ckpt = read_weights(path, device)
    a, n_classes = ckpt["args"], [len(values) for _, values in attributes(ckpt["classes"])]
    G = Generator(a["res"], a["z_dim"], a["g_ch"], n_classes, a["embed_dim"], a["slope"])
    G = G.to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes = ckpt["classes"]
    # a checkpoint without class counts: every value equally often
    G.class_counts = ckpt.get("class_counts", [[1] * n for n in n_classes])
    return G.eval().requires_grad_(False)


def check_labels(classes, y, n):
    """generate()'s y for n images as a long tensor: an int or (n,) labels for one attribute,
    (n, k) for k. A shape or value index that does not fit the classes is a UserError that says
    what fits, in the words of --class."""
    attrs = attributes(classes)
    k = len(attrs)
    y = torch.as_tensor(y, dtype=torch.long)
    y = y.expand(n) if y.dim() == 0 and k == 1 else y
    if y.shape != ((n,) if k == 1 else (n, k)):
        got = f"y={y.item()}" if y.dim() == 0 else f"y of shape {tuple(y.shape)}"
        if k == 1:
            raise UserError(f"{got}: give an int or ({n},) labels for {n} images")
        names = ", ".join(name for name, _ in attrs)
        fits = f"give ({n}, {k}) labels, one column per attribute"
        raise UserError(f"{got}: this checkpoint has {k} attributes ({names}); {fits}")
    for j, ((name, values), col) in enumerate(zip(attrs, y.reshape(n, k).T)):
        bad = col[(col < 0) | (col >= len(values))][:1].tolist()
        fits = f"0 to {len(values) - 1} ({', '.join(values)})"
        if bad and k == 1:
            raise UserError(f"y={bad[0]}: not one of this checkpoint's classes: {fits}")
        if bad:
            raise UserError(f"y[:, {j}]={bad[0]}: not one of the {name} values: {fits}")
    return y


def labels(G, n, y=None, seed=0):
    """y as labels, (n,) for one attribute, (n, k) for several. None: one attribute cycles
    through the classes (0, 1, 2, ...); several are drawn from their training frequencies,
    seeded by `seed`. An int is one class (one attribute); any y is checked by check_labels.
    One class: G has no embedding, y is ignored."""
    if y is None and isinstance(G.classes, dict):
        return draw_labels(G.classes, G.class_counts, n, torch.Generator().manual_seed(seed))
    if y is None or len(G.classes) == 1:
        return torch.arange(n) % len(G.classes)
    return check_labels(G.classes, y, n)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; the same seed, the same images.
    truncation: a bound on |z| (entries beyond it are redrawn). y: an int class index, (n,)
    labels or (n, k) for several attributes; None cycles through the classes (one attribute) or
    draws each attribute from its training frequencies (several)."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    y, device = labels(G, n, y, seed), next(G.parameters()).device
    parts = [G(z[i : i + 256].to(device), y[i : i + 256].to(device)) for i in range(0, n, 256)]
    return torch.cat([x.float().cpu() for x in parts])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving on a great circle through `keys` latents and back; each
    image keeps its label (y as in generate())."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    zs, frames = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)], []
    y = labels(G, n, y, seed).to(device)
    for a, b in zip(zs, zs[1:] + zs[:1]):
        cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True)
        omega = torch.arccos(cos.clamp(-1, 1)).clamp_min(1e-6)  # (n, 1): the angle a to b
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
            frames.append(make_grid(G(z.to(device), y).float().cpu()))
    return frames


def sample(args):
    G = load_generator(args.sample, setup_device(args.device)[0])
    tag, y = f"seed{args.seed}", None
    if args.class_name is not None and len(G.classes) == 1:
        raise UserError("this checkpoint was trained unconditionally (one class): drop --class")
    if args.class_name is not None:  # the named values set, the others drawn as in training
        fixed = parse_class(G.classes, args.class_name)
        gen = torch.Generator().manual_seed(args.seed)
        y = draw_labels(G.classes, G.class_counts, args.n, gen, fixed)
        attrs = attributes(G.classes)
        tag += "".join(f"_{attrs[i][1][v]}" for i, v in fixed.items())
    if args.truncation is not None:
        tag += f"_trunc{args.truncation:g}"
    folder = os.path.dirname(args.sample)
    if args.interp:
        frames = interpolation_frames(G, args.n, args.seed, args.truncation, y)
        path = save_gif(frames, os.path.join(folder, f"interp_{tag}.gif"))
    else:
        images = generate(G, args.n, args.seed, args.truncation, y)
        path = save_grid(images, os.path.join(folder, f"samples_{tag}.png"))
    print(path)


# bf16 on a CPU: channels_last measured faster for this model's G and D step, 64x64 (fp32 NCHW = 1x:
# 1.77x vs 1.68x; README, CPU table). fp32 stays NCHW on a CPU: the same numbers as before
CPU_CHANNELS_LAST = True


# --- plumbing: the same in every model file (a test checks); skip it on a first read -------------


class Run:
    """Device, precision, DDP, seeding and resume; `for step in run.steps(grid, about)` yields each
    step, then logs, writes grids and checkpoints, saves on Ctrl-C, and stops on NaN/inf."""

    def __init__(self, args):
        self.args, self.ckpt = start_or_resume(args)
        self.device, self.rank, self.world = setup_device(self.args.device)
        self.say = print if self.rank == 0 else (lambda *text, **kw: None)
        self.precision, self.why = choose_precision(self.args.precision, self.device)
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.autocast = torch.autocast(self.device.type, dtype, enabled=dtype is not None)
        # channels_last: convolutions without layout transposes, on tensor cores (CUDA) or in
        # oneDNN's bf16 kernels (a CPU in bf16, where this model measured faster: CPU_CHANNELS_LAST)
        cpu_bf16 = self.device.type == "cpu" and self.precision == "bf16"
        fast = is_cuda(self.device) or (cpu_bf16 and CPU_CHANNELS_LAST)
        self.layout = torch.channels_last if fast else torch.contiguous_format
        # one GradScaler per optimizer: fp16 needs loss scaling, bf16 and fp32 do not
        fp16 = self.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if self.args.batch % self.world:
            raise UserError(f"--batch {self.args.batch} must divide by {self.world} processes")
        torch.manual_seed(self.args.seed + self.rank)
        self.step, self.state, self.sums, self.n, self.signum = 0, {}, {}, 0, None
        self.agreed = False  # every rank stops at this step: the last one, Ctrl-C or NaN/inf

    def track(self, **state):
        """What a checkpoint holds besides args, step and RNG: objects with a state_dict, tensors,
        and values that must match on resume (class names, given first). --resume loads them."""
        self.state = dict(state, scaler_G=self.scaler_G, scaler_D=self.scaler_D)
        ckpt, self.ckpt = self.ckpt or {}, None  # loaded here, not kept for the whole run
        if "init" in ckpt:
            ckpt = self.start_from(ckpt)
        for k, v in self.state.items() if ckpt else ():
            if hasattr(v, "load_state_dict"):
                v.load_state_dict(ckpt[k])
            elif torch.is_tensor(v):
                v.copy_(ckpt[k])
            elif v != ckpt[k]:
                raise UserError(f"this run's {k} are {v}; {self.args.out} was trained on {ckpt[k]}")
        if ckpt:
            self.step = ckpt["step"]
            self.say(f"resuming {self.args.out}/ckpt.pt at step {self.step}/{self.args.steps}")
        rng = ckpt["rng"][self.rank] if ckpt and len(ckpt["rng"]) == self.world else None
        if rng:  # each process continues its own noise (with another number of them: new noise)
            torch.set_rng_state(rng["cpu"].cpu())
            if is_cuda(self.device) and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        for m in state.values():
            if isinstance(m, nn.Module):
                m.to(memory_format=self.layout)

    def start_from(self, weights):
        """--init: G, D and G_ema from the file (G_ema as its G where it has none, D as initialised
        where it has no D). Nothing else: the run starts at step 0. -> {} (nothing to resume)"""
        path, nets = weights["init"], dict(G=weights.get("G"), D=weights.get("D"))
        nets["G"] = nets["G"] if nets["G"] is not None else weights.get("G_ema")
        nets["G_ema"] = weights["G_ema"] if weights.get("G_ema") is not None else nets["G"]
        theirs, ours = weights.get("classes"), self.state.get("classes")
        if theirs is not None and ours is not None:  # a CSV's attributes: {name: count}
            if (theirs := class_sizes(theirs)) != (ours := class_sizes(ours)):
                raise UserError(f"{path} has {theirs} classes, this data {ours}")
        for k, sd in nets.items():
            try:
                sd is None or self.state[k].load_state_dict(sd)
            except RuntimeError as e:  # a shape that differs: the first line that says which
                why = next((s.strip() for s in str(e).splitlines()[1:] if s.strip()), str(e))
                raise UserError(f"--init {path}: its {k} does not fit this run ({why})") from None
        kept = ", ".join(k for k, sd in nets.items() if sd is not None)
        self.say(f"starting from {path}: {kept}" + ("" if nets["D"] else "; D as initialised"))
        return {}

    def wrap(self, *models, ddp=True):  # the modules as the step calls them
        models = [DDP(m) if ddp and self.world > 1 else m for m in models]
        return [torch.compile(m) if self.args.compile else m for m in models]

    def log(self, **values):  # summed on the device: nothing syncs until the log line
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def steps(self, grid, about):
        a, out = self.args, self.args.out
        n = {k: sum(p.numel() for p in self.state[k].parameters()) / 1e6 for k in "GD"}
        self.say(
            f"{MODEL} | {a.data} at {a.res}x{a.res}: {about} | G {n['G']:.2f}M D {n['D']:.2f}M"
            f" params | {self.device} {self.precision} ({self.why}) | batch {a.batch} on {self.world}"
            f" process(es) | out {out}"
        )
        main = threading.current_thread() is threading.main_thread()  # handlers only there
        old = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM) if main}
        self.t_log, self.step_log = time.time(), self.step
        try:
            os.makedirs(f"{out}/samples", exist_ok=True)
            while self.step < a.steps:
                yield self.step
                self.step = step = self.step + 1
                if step % a.log_every == 0 or step == a.steps:
                    self.write_log()
                t_pause = time.time()  # grids and checkpoints are left out of img/s
                if sample_due(step, a) and self.rank == 0:
                    with torch.no_grad():
                        save_samples(out, step, grid())
                if (self.world == 1 or step % 10 == 0) and any_rank(self.signum, self.device):
                    self.agreed = True
                    self.save()
                    self.say(f"stopped at step {step}: saved {out}/ckpt.pt; continue with --resume")
                    raise SystemExit(130 if self.signum == signal.SIGINT else 143)
                if step % a.ckpt_every == 0 or step == a.steps:
                    self.save()
                self.t_log += time.time() - t_pause
            self.agreed = True
        except OSError as e:  # a full disk, a folder without write permission
            raise UserError(f"could not write {e.filename}: {e.strerror}; {self.kept()}") from None
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if dist.is_initialized():
                # a process that exits while the others still exchange its last collective (the
                # checkpoint's all_gather) can abort at exit: all meet first, if all got here
                if self.agreed:
                    dist.barrier()
                dist.destroy_process_group()
        self.say(f"done: {out}/ckpt.pt, samples in {out}/samples, loss curve {out}/loss.png")

    def write_log(self):  # means since the last line, img/s, memory, eta: stdout and log.jsonl
        self.check_finite()  # the GPU syncs here, on log steps only
        a, now = self.args, time.time()
        rec = dict(step=self.step, steps=a.steps, kimg=self.step * a.batch / 1000)
        rec |= zip(self.sums, torch.stack([*self.sums.values()]).div(self.n).tolist())
        rec["img_s"] = (self.step - self.step_log) * a.batch / max(now - self.t_log, 1e-9)
        if is_cuda(self.device):
            rec["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        rec["eta_s"] = (a.steps - self.step) * a.batch / max(rec["img_s"], 1e-9)
        self.sums, self.n, self.t_log, self.step_log = {}, 0, now, self.step
        self.say(log_line(rec), flush=True)
        if self.rank == 0:
            with naming(f"{a.out}/log.jsonl") as path, open(path, "a") as f:
                f.write(json.dumps(dict(rec, time=now)) + "\n")

    def on_signal(self, signum, frame):  # a second Ctrl-C stops at once
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def check_finite(self):  # losses since the last log line and all weights, on every rank
        nets = [m for m in self.state.values() if isinstance(m, nn.Module)]
        tensors = [*self.sums.values(), *(p for m in nets for p in m.parameters())]
        if any_rank(not torch.stack([t.isfinite().all() for t in tensors]).all(), self.device):
            self.agreed = True
            why = f"loss or weights became NaN/inf by step {self.step}"
            raise UserError(f"{why}; stopped without saving ({self.kept()})")

    def kept(self):  # for an error: where the last good checkpoint is
        path = f"{self.args.out}/ckpt.pt"
        return f"the last good checkpoint is {path}" if os.path.exists(path) else "none was saved"

    def save(self):  # all ranks give their RNG state; rank 0 writes a temporary file, renamed
        self.check_finite()
        rng = {"cpu": torch.get_rng_state()}
        if is_cuda(self.device):
            rng["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        rngs = [rng] * self.world
        if dist.is_initialized():
            dist.all_gather_object(rngs, rng)
        ckpt = dict(model=MODEL, args=vars(self.args), step=self.step, rng=rngs)
        for k, v in self.state.items():
            ckpt[k] = v.state_dict() if hasattr(v, "state_dict") else v
        path = f"{self.args.out}/ckpt.pt"
        if self.rank == 0:
            data = io.BytesIO()  # serialised first: a full disk then fails in a plain write
            torch.save(ckpt, data)
            try:
                with naming(path), open(path + ".tmp", "wb") as f:
                    f.write(data.getbuffer())
                    os.fsync(f.fileno())
                os.replace(path + ".tmp", path)
            finally:  # no partial file is left; the last good ckpt.pt stays
                if os.path.exists(path + ".tmp"):
                    os.remove(path + ".tmp")


def is_cuda(device):  # every CUDA-only line asks this first (tests fake CUDA through it)
    return device.type == "cuda"


@contextlib.contextmanager
def naming(path):  # an OSError inside names `path` (a full disk's names no file)
    try:
        yield path
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def setup_device(name):
    """auto: cuda, else mps, else cpu. cuda: cuda:LOCAL_RANK under torchrun (with DDP), else 0."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = check_device(name, int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else None)
    if is_cuda(device):
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # TF32 convolutions
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        nccl = device.type == "cuda"
        dist.init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None)
    return device, rank, world


def choose_precision(asked, device):
    """--precision -> (fp32, bf16 or fp16; why, for the start line). auto: bf16 where autocast has
    native bf16 kernels (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, as torch
    reports it), else fp32. bf16 asked on a CPU without them runs emulated: slower than fp32."""
    if is_cuda(device):
        native, where = torch.cuda.is_bf16_supported(), "this GPU"
    else:  # oneDNN's bf16 kernels need AVX512-BF16 or AMX tiles: torch.cpu's own probes
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = device.type == "cpu" and any(getattr(torch.cpu, p, bool)() for p in probes)
        where = f"this {device.type.upper()}"
    if asked == "auto":
        has = "has" if native else "has no"
        return ("bf16" if native else "fp32"), f"auto: {where} {has} native bf16"
    if asked == "bf16" and device.type == "cpu" and not native:
        return asked, f"{where} has no native bf16: emulated, slower than fp32"
    return asked, "as asked"


def check_device(name, local_rank=None):
    """The torch.device for a --device value (local_rank: under torchrun); one that this machine
    lacks is a UserError, for the command line and load_generator alike."""
    name, msg = str(name), f"--device {name}:"
    if name == "auto":
        name = "mps" if torch.backends.mps.is_available() else "cpu"
        name = "cuda" if torch.cuda.is_available() else name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{msg} unknown device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{msg} this machine has no MPS (Apple GPU) backend")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{msg} this machine has no CUDA GPU (or torch was built without CUDA)")
        if local_rank is not None and device.index not in (None, local_rank):
            raise UserError(f"{msg} under torchrun each process uses cuda:LOCAL_RANK; use cuda")
        index = (device.index or 0) if local_rank is None else local_rank
        if index >= (count := torch.cuda.device_count()):
            raise UserError(f"{msg} cuda:{index} does not exist ({count} GPU(s))")
        device = torch.device("cuda", index)
    return device


def start_or_resume(args):
    """Refuse to overwrite a run. With --resume, the arguments come from the checkpoint except
    --out and the resumable ones typed on the command line (args.typed, from parse_args)."""
    resumable = "data steps device compile log_every sample_every ckpt_every".split()
    typed, path = set(vars(args).pop("typed", ())) - {"out", "resume"}, f"{args.out}/ckpt.pt"
    if os.path.exists(path) and not args.resume:
        raise UserError(f"{path} exists: pass --resume to continue it or choose another --out")
    if args.init and args.resume:
        raise UserError("--init starts a new run and --resume continues one: choose one")
    if not args.resume:
        return (args, None) if args.init is None else init_from(args, typed)
    ckpt, flag = load_checkpoint(path), lambda k: "--" + k.replace("_", "-")
    saved, can = ckpt["args"], ", ".join(map(flag, resumable))
    for k in sorted(typed - set(resumable)):
        if k not in saved:  # a flag newer than the run (which has its default)
            raise UserError(
                f"{flag(k)}: {path} is from before that flag; on --resume only {can} can change"
            )
        if getattr(args, k) != saved[k]:
            was = f"differs from the run's {saved[k]}; on --resume only {can} can change"
            raise UserError(f"{flag(k)} {getattr(args, k)} {was}")
    kept = {k: v for k, v in saved.items() if k not in typed | {"out", "resume"}}
    given = ", ".join(f"{k}={getattr(args, k)}" for k in sorted(typed)) or "nothing"
    kept_text = ", ".join(f"{k}={v}" for k, v in kept.items())
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"resume: from the command line: {given}; from the checkpoint: {kept_text}")
    return argparse.Namespace(**(vars(args) | kept)), ckpt


def class_sizes(classes):  # a class count, or {attribute: count} for several attributes
    return {k: len(v) for k, v in classes.items()} if isinstance(classes, dict) else len(classes)


def init_from(args, typed):
    """--init FILE: the networks' sizes from FILE (one typed otherwise is refused) and their
    weights, which Run.track loads; steps, optimizers and data start anew."""
    weights = read_weights(args.init)
    for k, v in weights["args"].items():
        if k in typed and getattr(args, k) != v:
            flag = "--" + k.replace("_", "-")
            raise UserError(f"{flag} {getattr(args, k)} differs from {args.init}'s {v}: drop it")
        setattr(args, k, v)
    return args, dict(weights, init=args.init)


def read_torch(path, device="cpu", allow=()):
    """torch.load with weights_only=True: tensors, plain containers and the torch classes in
    `allow` (rebuilt from their saved state); nothing in the file runs. A missing or unreadable
    file, or a global that weights_only refuses, is one line that says which."""
    device = check_device(device)  # an absent GPU is said as such, not as an unreadable file
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))  # weights_only names what it refused
        if refused:
            why = f"refused global {refused[1]}; nothing in the file was run"
            raise UserError(f"{path}: {why}") from None
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None


def load_checkpoint(path, device="cpu"):
    ckpt = read_torch(path, device)
    found = ckpt.get("model") if isinstance(ckpt, dict) else None
    if found != MODEL:
        raise UserError(f"{path} is not a {MODEL} checkpoint (model: {found})")
    return ckpt


def leave(status):
    """sys.exit(status); under torchrun os._exit, once everything is written. torch 2.13's DDP
    keeps the gloo process group's worker threads alive after destroy_process_group; one that
    releases the last collective's tensors while Python shuts down needs the interpreter, which
    ends the thread, and the C++ runtime aborts the process (SIGABRT, 'terminate called without
    an active exception') after a run that finished. os._exit skips that shutdown."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if isinstance(status, str) else status or 0)


def any_rank(flag, device):  # all ranks call it together; one process: no tensor, no GPU sync
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor(float(bool(flag)), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sample_due(step, args):
    """A grid every --sample-every steps and at the end; before the first of those, also at steps
    10, 20, 40, 80, ..., so that a new run shows a picture within seconds."""
    early = step < args.sample_every and step % 10 == 0 and (k := step // 10) & (k - 1) == 0
    return step % args.sample_every == 0 or step == args.steps or early


def log_line(rec):
    """step 1200/50000 | kimg 76.8 | loss_D 1.213 | ... | 512 img/s | 1.9 GB | eta 2h41m"""
    h, m = divmod(int(rec["eta_s"]) // 60, 60)
    skip = ("step", "steps", "kimg", "img_s", "mem_gb", "eta_s", "time")
    parts = [f"step {rec['step']}/{rec['steps']}", f"kimg {rec['kimg']:.1f}"]
    parts += [f"{k} {v:.4g}" for k, v in rec.items() if k not in skip]
    parts += [f"{rec['img_s']:.0f} img/s"]
    parts += [f"{rec['mem_gb']:.2f} GB"] if "mem_gb" in rec else []
    return " | ".join(parts + [f"eta {h}h{m:02d}m" if h or m else f"eta {int(rec['eta_s'])}s"])


# --- command line: the shared flags, the same in every model file, then this model's own --------


def positive(kind, off=False):  # an argparse type: an int or a finite float above 0 (or 0: off)
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not (0 <= value if off else 0 < value) or value == math.inf:
            what = ("0 (off) or " if off else "") + ("an integer" if kind is int else "a number")
            raise argparse.ArgumentTypeError(f"must be {what} above 0, got {text!r}")
        return value

    return parse


class Help(argparse.ArgumentDefaultsHelpFormatter):  # each default once; none for None or off
    def _get_help_string(self, action):
        said = action.default is None or action.default is False or "default" in action.help
        return action.help if said else super()._get_help_string(action)


def shared_flags(
    about, steps, batch, lr_g, lr_d, ema_kimg, truncation, truncation_type=None, ema_rampup=0.05
):
    """The flags every model file has, with this model's defaults (its recommended 64x64 run)."""
    p = argparse.ArgumentParser(description=about, formatter_class=Help)
    add, pos_int, pos = p.add_argument, positive(int), positive(float)
    add("--data", default="toy", help="image folder (subfolders = classes), .zip, or toy")
    add("--res", type=int, default=64, help="image resolution (a power of two)")
    add(
        "--out",
        help=f"run folder: ckpt.pt, log.jsonl, samples/ (default out/{MODEL}-DATA, DATA the name"
        " of --data's folder or zip; --resume finds the run the same way)",
    )
    add("--steps", type=pos_int, default=steps, help="training steps (G updates)")
    add("--batch", type=pos_int, default=batch, help="global batch, split over processes")
    add("--lr-g", type=pos, default=lr_g, help="G learning rate")
    add("--lr-d", type=pos, default=lr_d, help="D learning rate")
    off = positive(float, off=True)
    add("--ema-kimg", type=off, default=ema_kimg, help="G_ema half-life in kimg (0: no EMA)")
    add(
        "--ema-rampup",
        type=off,
        default=ema_rampup,
        help="G_ema half-life at most this fraction of the images seen (0: no ramp-up)",
    )
    add("--seed", type=int, default=0, help="seed of weights, noise, data order and samples")
    add("--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1")
    add(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto: bf16 where the GPU or CPU has native bf16 kernels, else fp32",
    )
    add("--compile", action="store_true", help="torch.compile G and D forward passes")
    add("--resume", action="store_true", help="continue the run in --out")
    add(
        "--init",
        metavar="FILE",
        help="a new run from these weights: a ckpt.pt or a reference implementation's file (README:"
        " Start from a trained model); sizes from FILE, step 0, new optimizers",
    )
    add("--log-every", type=pos_int, default=50, help="steps between log lines")
    add("--sample-every", type=pos_int, default=200, help="steps between sample grids")
    add("--ckpt-every", type=pos_int, default=1000, help="steps between checkpoints")
    add("--flip", action=argparse.BooleanOptionalAction, default=True, help="random x-flips")
    add("--sample", metavar="CKPT", help="sampling mode: a grid from this checkpoint's G_ema")
    add("--n", type=pos_int, default=64, help="sampling: number of images")
    add("--truncation", type=truncation_type or pos, help=f"sampling: {truncation}")
    add("--interp", action="store_true", help="sampling: a latent-interpolation GIF")
    return p


def parse_args(parser, argv=None):
    """A bad value exits with one line. args.typed: the arguments typed, for --resume."""
    parser.error = lambda message: sys.exit(f"{MODEL}: error: {message} (see --help)")
    args = parser.parse_args(argv)
    unset = object()  # argparse keeps a namespace's attribute unless it was typed
    seen = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
    args.typed = sorted(k for k, v in vars(seen).items() if v is not unset)
    name = os.path.splitext(os.path.basename(os.path.abspath(args.data)))[0]
    args.out = args.out or f"out/{MODEL}-{name}"  # one folder per model and data, e.g. -toy
    return args


def get_args(argv=None):
    p = shared_flags(
        "Conditional GAN (Mirza & Osindero 2014) with a projection D, for anime faces with class "
        "subfolders.",
        steps=30000,
        batch=64,
        lr_g=1e-4,
        lr_d=2e-4,
        ema_kimg=10.0,
        truncation="redraw z entries beyond |T| (a bound on z)",
    )
    add = p.add_argument

    off_or_positive = positive(float, off=True)

    add(
        "--class",
        dest="class_name",
        metavar="SPEC",
        help="sampling: only this class (name or index), or attribute values such as "
        "hair=blonde,eyes=blue (any subset; the others drawn from their training frequencies)",
    )
    add(
        "--labels",
        metavar="FILE.csv",
        help="attribute labels: a CSV with a file column (paths relative to --data) and "
        "attribute columns; default: subfolders",
    )
    add(
        "--label-columns",
        metavar="NAMES",
        help="the --labels columns to condition on, comma-separated (e.g. hair,eyes); default: all",
    )
    add("--z-dim", type=positive(int), default=100, help="latent size (DCGAN's 100)")
    add("--g-ch", type=positive(int), default=64, help="G width: its last hidden layer")
    add("--d-ch", type=positive(int), default=64, help="D width: its first layer")
    add(
        "--embed-dim",
        type=positive(int),
        default=50,
        help="size of G's class embedding, joined to z",
    )
    add("--slope", type=float, default=0.1, help="LeakyReLU negative slope in G and D")
    add(
        "--noise-std",
        type=off_or_positive,
        default=0.75,
        help="instance noise: starting std of the Gaussian noise on every image D sees (0: none)",
    )
    add(
        "--noise-kimg",
        type=off_or_positive,
        default=1000.0,
        help="instance noise: thousands of real images over which its std falls linearly to 0"
        " (0: none)",
    )
    add(
        "--real-target",
        type=float,
        nargs=2,
        default=[0.95, 1.0],
        metavar=("LO", "HI"),
        help="label smoothing: D's targets for real images are drawn from U[LO, HI]",
    )
    add(
        "--fake-target",
        type=float,
        nargs=2,
        default=[0.0, 0.05],
        metavar=("LO", "HI"),
        help="label smoothing: D's targets for fake images are drawn from U[LO, HI]",
    )
    add(
        "--g-extra-threshold",
        type=float,
        default=2.0,
        help="an extra G step in any iteration whose loss_G (mean over processes) exceeds this; "
        "inf: never",
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        leave(f"{MODEL}: error: {e}")
    except OSError as e:  # e.g. a sample grid on a full disk
        leave(f"{MODEL}: error: could not write {e.filename}: {e.strerror}")
    except SystemExit as e:  # stopped by Ctrl-C or SIGTERM, after saving: 130 or 143
        leave(e.code)
    leave(0)
