"""FID and KID between two image sets, for the models in this folder. torch + numpy, no scipy.

FID: "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, 2017. arXiv:1706.08500.
KID: "Demystifying MMD GANs", Binkowski, Sutherland, Arbel, Gretton, 2018. arXiv:1801.01401.

What is measured
- Features: the 2048-d pool3 output of the FID Inception-v3 (TF 2015-12-05 weights), written
  here in pytorch-fid's module layout so that its state dict loads as it is (`FIDInceptionV3`).
  The official pytorch-fid release file (with the unused 1008-way `fc`) and the shared file
  without `fc` both load; any other missing or extra key is an error.
- Preprocessing, as pytorch-fid: uint8 RGB -> [0, 1] -> bilinear resize to 299x299
  (align_corners=False, no antialiasing) -> [-1, 1]. Generated images are first rounded to uint8,
  exactly as `common.save_grid` would write them, so both sides go through the same path.
- FID = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f), statistics in float64 (covariance
  with n-1). tr sqrt(S_r S_f) is the sum of the singular values of sqrt(S_r) sqrt(S_f), each square
  root from an eigen-decomposition (`frechet_distance`); with fewer images than 2048 dimensions,
  the same singular values come from the smaller cross matrix of the features (`fid_from_features`).
- KID = unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / 2048 + 1)^3, averaged over 100
  random subsets of min(1000, n_real, n_fake) images from each side (`kernel_inception_distance`);
  one subset, the whole sets, when both sides have exactly that many.

Inputs (REAL and FAKE alike): an image folder (subfolders are read too), a .zip, `toy`, or a model
checkpoint (`out/sagan-anime64/ckpt.pt`): the model file named in the checkpoint is imported and --n images
are drawn from its G_ema with its `load_generator` / `generate`. Image sets are read by
`common.load_images` at the checkpoint's resolution (--res overrides; 64 when neither side is a
checkpoint) and, with --n, reduced to a fixed random subset of n images. Their features are cached
under $GAN_CACHE_DIR/fid (the convention of common.py), keyed by the pixels and the weights.

Usage
    python fid.py ../shared/data/anime64 out/sagan-anime64/ckpt.pt                 # 10,000 fakes vs all reals
    python fid.py ../shared/data/anime64 out/sagan-anime64/ckpt.pt --n 50000 --json out/sagan-anime64/fid.json
    python fid.py ../shared/data/anime64 ../shared/data/anime_hair --n 500 \\
        --inception ../shared/fid/pt_inception-2015-12-05.pth                  # offline weights
The last line printed is `fid X | kid Y | n_real N | n_fake M`.
"""

import argparse
import hashlib
import importlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import UserError, cache_dir, load_images

HERE = os.path.dirname(os.path.abspath(__file__))
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
PREPROCESS = "uint8 -> bilinear 299 (align_corners=False, no antialias) -> [-1, 1]"


# --- the FID Inception-v3 -----------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (TF's eps 1e-3) -> ReLU."""

    def __init__(self, c_in, c_out, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool_tf(x):
    # TF's average pool leaves the zero padding out of the mean; the FID network was trained so
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, c_in, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(avg_pool_tf(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class FIDInceptionC(nn.Module):
    """Factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, c_in, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for conv in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            b7dbl = conv(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, c_in):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1
        )


class FIDInceptionE(nn.Module):
    """Expanded filter bank on the 8x8 grid. pool: 'avg' in Mixed_7b (FIDInceptionE_1), 'max' in
    Mixed_7c (FIDInceptionE_2): the TF graph has a max pool there, where the paper has an average."""

    def __init__(self, c_in, pool):
        super().__init__()
        self.pool = (
            avg_pool_tf if pool == "avg" else (lambda x: F.max_pool2d(x, 3, stride=1, padding=1))
        )
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(b3dbl),
                self.branch3x3dbl_3b(b3dbl),
                self.branch_pool(self.pool(x)),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """uint8 images (B, H, W, 3) -> pool3 features (B, 2048). Attribute names follow torchvision's
    Inception3 as patched by pytorch-fid, so the TF-ported state dict loads key for key."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in [0, 1]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # the range the TF network was trained on
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean((2, 3))  # (B, 2048): the global average pool


def load_inception(path=None, device="cpu"):
    """FIDInceptionV3 with the TF 2015-12-05 weights: from `path`, else the pytorch-fid release file
    (downloaded once into the torch hub cache). Returns (network, short fingerprint of its weights)."""
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"no Inception weights at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path} is not a readable state dict ({type(e).__name__})") from None
    else:
        try:
            state = torch.hub.load_state_dict_from_url(
                FID_WEIGHTS_URL,
                map_location="cpu",
                progress=True,
                check_hash=True,
                weights_only=True,
            )
        except Exception as e:
            raise UserError(
                f"could not download the FID Inception weights ({type(e).__name__}: {e}); "
                f"pass --inception PATH to a local copy"
            ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {
        k: v for k, v in state.items() if k not in ("fc.weight", "fc.bias")
    }  # FID stops at pool3
    net = FIDInceptionV3()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        own = set(net.state_dict())
        missing, extra = sorted(own - set(state)), sorted(set(state) - own)
        bad = sorted(
            k
            for k in own & set(state)
            if getattr(state[k], "shape", None) != net.state_dict()[k].shape
        )
        raise UserError(
            f"{path or FID_WEIGHTS_URL} is not the FID Inception state dict (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {bad[:3]})"
        ) from None
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode() + state[k].cpu().contiguous().numpy().tobytes())
    return net.to(device).eval().requires_grad_(False), h.hexdigest()[:12]


# --- FID and KID --------------------------------------------------------------------------------


def statistics(features):
    """(N, d) features -> mean (d,) and covariance (d, d) with N-1, both float64."""
    f = np.asarray(features, dtype=np.float64)
    mu = f.mean(0)
    f = f - mu
    return mu, f.T @ f / (len(f) - 1)


def sqrt_psd(A):
    """Symmetric square root of a symmetric positive semi-definite matrix (rounding-negative
    eigenvalues clipped to 0)."""
    lam, V = np.linalg.eigh((A + A.T) / 2)
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64.
    S1 S2 has the eigenvalues of sqrt(S1) S2 sqrt(S1), which are the squared singular values of
    X = sqrt(S1) sqrt(S2); so tr sqrt(S1 S2) = sum of X's singular values. Taking singular values,
    rather than square roots of near-zero eigenvalues, keeps rounding noise in the (many) null
    directions of a covariance from fewer than 2048 samples at ~1e-15 instead of ~1e-7 each."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    tr_covmean = np.linalg.svd(sqrt_psd(sigma1) @ sqrt_psd(sigma2), compute_uv=False).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(f_real, f_fake):
    """FID of two (N, d) feature sets. With fewer samples than dimensions (small CPU runs), the same
    trace comes cheaper from the N_real x N_fake cross matrix X Y^T of the centred, (n-1)-scaled
    features: its singular values are those of sqrt(S_r) sqrt(S_f), as S_r = X^T X and S_f = Y^T Y."""
    x, y = np.asarray(f_real, np.float64), np.asarray(f_fake, np.float64)
    if len(x) + len(y) > x.shape[1]:
        return frechet_distance(*statistics(x), *statistics(y))
    mu1, mu2 = x.mean(0), y.mean(0)
    x, y = (x - mu1) / np.sqrt(len(x) - 1), (y - mu2) / np.sqrt(len(y) - 1)
    tr_covmean = np.linalg.svd(x @ y.T, compute_uv=False).sum()
    return float(((mu1 - mu2) ** 2).sum() + (x**2).sum() + (y**2).sum() - 2 * tr_covmean)


def kernel_inception_distance(f_real, f_fake, subsets=100, subset_size=1000, seed=0):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of
    m = min(subset_size, n_real, n_fake) per side, drawn without replacement (Binkowski et al., sec. 3).
    Returns (mean, std over subsets, m)."""
    x_all, y_all = np.asarray(f_real, np.float64), np.asarray(f_fake, np.float64)
    d, m = x_all.shape[1], min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise UserError("KID needs at least 2 images on each side")
    if m == len(x_all) == len(y_all):
        subsets = 1  # every subset would be the whole set
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        values.append(
            (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2 * k_xy.mean()
        )
    return float(np.mean(values)), float(np.std(values)), m


# --- inputs: image sets and checkpoints ---------------------------------------------------------


def read_checkpoint_header(path):
    """The model name and resolution a checkpoint was trained with."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt["model"], int(ckpt["args"]["res"])
    except Exception as e:
        raise UserError(
            f"{path} is neither an image folder nor a readable model checkpoint "
            f"({type(e).__name__}: {e})"
        ) from None


def is_checkpoint(spec):
    return spec != "toy" and os.path.isfile(spec) and not spec.lower().endswith(".zip")


class Progress:
    """A line at most every `every` seconds, and one at the end: `what: 1024/5000 | 85 img/s | eta 47s`."""

    def __init__(self, what, total, every=10.0):
        self.what, self.total, self.every = what, total, every
        self.t0 = self.t_last = time.time()

    def __call__(self, done):
        now = time.time()
        if now - self.t_last < self.every and done < self.total:
            return
        self.t_last = now
        rate = done / max(now - self.t0, 1e-9)
        print(
            f"{self.what}: {done}/{self.total} | {rate:.3g} img/s | eta {(self.total - done) / max(rate, 1e-9):.0f}s",
            flush=True,
        )


@torch.no_grad()
def features_of_images(net, images, device, batch=64, what="features"):
    """(N, H, W, 3) uint8 array (a memmap is fine) -> (N, 2048) float32 features."""
    out, progress = [], Progress(what, len(images))
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device)
        out.append(net(x).float().cpu())
        progress(min(i + batch, len(images)))
    return torch.cat(out).numpy()


def to_uint8(x):
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded as common.make_grid writes a PNG."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


@torch.no_grad()
def features_of_checkpoint(net, path, n, device, batch=64, seed=0, truncation=None, chunk=10_000):
    """Draw n images from the checkpoint's G_ema, in chunks of `chunk` (chunk k uses generate's
    seed seed * 1_000_003 + k, so memory stays bounded), and return their features."""
    name, _ = read_checkpoint_header(path)
    if not name.isidentifier() or not os.path.isfile(os.path.join(HERE, f"{name}.py")):
        raise UserError(
            f"{path} was written by model {name!r}, but there is no {name}.py beside fid.py"
        )
    sys.path.insert(0, HERE)
    mod = importlib.import_module(name)
    G = mod.load_generator(path, device)
    out, progress = [], Progress(f"features of {n} images from {path}", n)
    for k, start in enumerate(range(0, n, chunk)):
        images = to_uint8(
            mod.generate(G, min(chunk, n - start), seed=seed * 1_000_003 + k, truncation=truncation)
        )
        for i in range(0, len(images), batch):
            out.append(net(images[i : i + batch].to(device)).float().cpu())
            progress(start + min(i + batch, len(images)))
    return torch.cat(out).numpy()


def features_of_set(net, weights_id, spec, res, n, device, batch=64, use_cache=True):
    """Features of an image folder / zip / toy set at `res`, or of a fixed random subset of n of its
    images; cached in $GAN_CACHE_DIR/fid under a key of the pixels, the weights and the preprocessing."""
    data = load_images(spec, res)
    idx = np.arange(len(data.labels))
    if n is not None and n < len(idx):
        idx = np.sort(np.random.default_rng(0).permutation(len(idx))[:n])
    images = data.images[idx] if len(idx) < len(data.labels) else data.images
    h = hashlib.sha1(f"{weights_id}|{PREPROCESS}|{images.shape}".encode())
    for i in range(0, len(images), 4096):
        h.update(np.ascontiguousarray(images[i : i + 4096]).tobytes())
    base = (
        os.path.basename(os.path.abspath(spec).rstrip("/")).removesuffix(".zip")
        if spec != "toy"
        else "toy"
    )
    path = os.path.join(
        cache_dir(), "fid", f"{base}_{res}px_n{len(images)}_{h.hexdigest()[:16]}.npy"
    )
    if use_cache and os.path.isfile(path):
        print(f"{spec}: cached features of {len(images)} images ({path})")
        return np.load(path)
    f = features_of_images(
        net, images, device, batch, what=f"features of {len(images)} images from {spec}"
    )
    if use_cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, f)
        os.replace(tmp, path)
    return f


# --- command line -------------------------------------------------------------------------------


def measure(args):
    t0 = time.time()
    if args.device == "auto":
        args.device = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    device = torch.device(args.device)
    if device.type == "cuda":  # full fp32 convolutions: TF32 would move FID in the 2nd-3rd digit
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    ckpt_res = [read_checkpoint_header(s)[1] for s in (args.real, args.fake) if is_checkpoint(s)]
    res = args.res or (ckpt_res[0] if ckpt_res else 64)
    net, weights_id = load_inception(args.inception, device)
    print(
        f"fid: Inception-v3 (weights {weights_id}) on {device} | image sets at {res}x{res} | "
        f"resize to 299 bilinear, as pytorch-fid"
    )
    feats = []
    for spec in (args.real, args.fake):
        if is_checkpoint(spec):
            f = features_of_checkpoint(
                net, spec, args.n or 10_000, device, args.batch, args.seed, args.truncation
            )
        else:
            f = features_of_set(
                net, weights_id, spec, res, args.n, device, args.batch, not args.no_cache
            )
        feats.append(f)
    f_real, f_fake = feats
    if min(len(f_real), len(f_fake)) < 2:
        raise UserError("FID needs at least 2 images on each side")
    fid = fid_from_features(f_real, f_fake)
    kid, kid_std, m = kernel_inception_distance(
        f_real, f_fake, args.kid_subsets, args.kid_subset_size
    )
    result = {
        "fid": fid,
        "kid": kid,
        "n_real": len(f_real),
        "n_fake": len(f_fake),
        "kid_std": kid_std,
        "kid_subsets": args.kid_subsets if m < max(len(f_real), len(f_fake)) else 1,
        "kid_subset_size": m,
        "real": args.real,
        "fake": args.fake,
        "res": res,
        "weights": weights_id,
        "preprocess": PREPROCESS,
        "seconds": round(time.time() - t0, 1),
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(
        f"kid over {result['kid_subsets']} subset(s) of {m} per side: std {kid_std:.6f} | "
        f"{result['seconds']:.0f}s" + (f" | wrote {args.json}" if args.json else "")
    )
    print(f"fid {fid:.4f} | kid {kid:.6f} | n_real {len(f_real)} | n_fake {len(f_fake)}")
    return result


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="FID and KID between two image sets or checkpoints.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("real", help="image folder, .zip, 'toy', or a model checkpoint")
    p.add_argument("fake", help="image folder, .zip, 'toy', or a model checkpoint")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="images per side: drawn from a checkpoint (default 10000); for an image set, a fixed "
        "random subset of n (default: all)",
    )
    p.add_argument(
        "--res",
        type=int,
        default=None,
        help="resolution image sets are read at (default: the checkpoint's, else 64)",
    )
    p.add_argument(
        "--inception",
        metavar="PATH",
        default=None,
        help="local FID Inception weights (pytorch-fid layout, with or without fc); default: "
        "download the pytorch-fid release once into the torch hub cache",
    )
    p.add_argument("--batch", type=int, default=64, help="images per Inception forward pass")
    p.add_argument(
        "--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the images drawn from a checkpoint"
    )
    p.add_argument(
        "--truncation", type=float, default=None, help="passed to the model's generate()"
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: number of random subsets")
    p.add_argument(
        "--kid-subset-size", type=int, default=1000, help="KID: images per side in a subset"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="recompute image-set features, write no cache"
    )
    p.add_argument("--json", metavar="PATH", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 2:
        p.error("--n must be at least 2")
    return args


if __name__ == "__main__":
    try:
        measure(get_args())
    except UserError as e:
        sys.exit(f"fid: error: {e}")
