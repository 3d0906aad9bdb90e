"""Images in, pictures out: the only code the model files share.

- `load_images(data, res)`: a folder (recursive), a .zip or `toy` -> `ImageSet` of uint8 images
  (N, res, res, 3), integer labels and class names. Decoded once, cached on disk and
  memory-mapped, so later runs start in seconds and sets larger than RAM work.
- `Batches`: infinite, shuffled, reproducible batches in [-1, 1] on the training device, a
  disjoint shard per DDP rank, with a `state_dict()` so a resumed run draws the same batches.
- `make_grid` / `save_grid`, `save_gif`, `save_progress_gif`, `plot_losses`: PNG grids,
  animated GIFs and the loss curve (from `log.jsonl`), drawn with Pillow.

The cache lives in $GAN_CACHE_DIR, else $XDG_CACHE_HOME/anime-gans, else ~/.cache/anime-gans.
"""

import csv
import hashlib
import io
import json
import math
import os
import zipfile
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
CACHE_VERSION = 2  # 2: the names of skipped files
ImageSet = namedtuple("ImageSet", "images labels classes")  # (N,res,res,3) uint8, (N,) int64, [str]


class UserError(ValueError):
    """Bad input (data, arguments, checkpoint) or a run that must stop: the model files print it
    as one line, `<model>: error: ...`, and exit with status 1."""


# --- reading images -----------------------------------------------------------------------------


def _list_files(data, others=None):
    """[(relative path, size, mtime_ns)] of the images in a folder or zip, sorted by path. Files
    that are not images by their extension (hidden ones and __MACOSX aside) go into `others`."""
    others = [] if others is None else others
    if data.lower().endswith(".zip"):
        if not os.path.isfile(data):
            raise UserError(f"zip file {data!r} not found")
        try:
            with zipfile.ZipFile(data) as zf:
                infos = [
                    i for i in zf.infolist() if not i.is_dir() and "__MACOSX" not in i.filename
                ]
        except zipfile.BadZipFile:
            raise UserError(f"{data!r} is not a valid zip file") from None
        listed = [(i.filename, i.file_size, 0) for i in infos]
    elif not os.path.isdir(data):
        raise UserError(f"data folder {data!r} not found (pass a folder, a .zip or 'toy')")
    else:
        listed = []
        for root, dirs, names in os.walk(data, followlinks=True):
            dirs.sort()
            for name in names:
                path = os.path.join(root, name)
                st = os.stat(path)
                listed.append(
                    (os.path.relpath(path, data).replace(os.sep, "/"), st.st_size, st.st_mtime_ns)
                )
    listed = [f for f in sorted(listed) if not os.path.basename(f[0]).startswith(".")]
    others += [f[0] for f in listed if not f[0].lower().endswith(IMAGE_EXTS)]
    return [f for f in listed if f[0].lower().endswith(IMAGE_EXTS)]


def _class_of(paths):
    """ImageFolder convention: first-level subfolders are classes, unless images also lie at the
    top level (then one class). A single wrapper folder (faces.zip -> faces/...) is looked through."""
    parts = [p.split("/") for p in paths]
    while len(parts) and all(len(q) > 2 for q in parts) and len({q[0] for q in parts}) == 1:
        parts = [q[1:] for q in parts]
    if not parts or any(len(q) == 1 for q in parts):
        return [""] * len(parts), [""]
    names = [q[0] for q in parts]
    return names, sorted(set(names))


def _decode(raw, res):
    """Bytes of any image -> (res, res, 3) uint8: RGB, center-cropped square, antialiased resize."""
    im = Image.open(io.BytesIO(raw))
    # JPEG: decode at the smallest DCT scale still >= res (fast, antialiased)
    im.draft("RGB", (res, res))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((a * (255.0 / max(a.max(), 1.0))).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)  # transparent pixels become white, not black
    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(im.crop(box).resize((res, res), Image.LANCZOS), dtype=np.uint8)


def cache_dir():
    default = os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "anime-gans"
    )
    return os.environ.get("GAN_CACHE_DIR", default)


def load_images(data, res, verbose=True, labels=None, label_columns=None):
    """Folder / .zip / 'toy' -> ImageSet, decoded once and memory-mapped from the cache.
    labels: a CSV (`file` column, paths relative to data, plus attribute columns) whose columns
    (label_columns, default all) label the images instead of the subfolders. One column: classes
    is a list and labels (N,), as for subfolders; several: classes {column: values}, labels (N, k).
    """
    say = print if verbose else (lambda *a, **k: None)
    if label_columns and not labels:
        raise UserError("--label-columns needs --labels FILE.csv")
    if data == "toy":
        if labels:
            raise UserError("--labels needs --data FOLDER or FILE.zip, not toy")
        key_src, files, table = ["toy", res, CACHE_VERSION], None, None
    else:
        data = os.path.abspath(os.path.expanduser(data))
        files = _list_files(data, others := [])
        if others:
            say(
                f"ignored {len(others)} file(s) that are not images by their extension: {few(others)}"
            )
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found in {data!r}")
        table = read_labels(labels, label_columns) if labels else None
        key_src = [data, res, CACHE_VERSION, files]
        key_src += [table["sha1"], table["columns"]] if table else []
    key = hashlib.sha1(json.dumps(key_src).encode()).hexdigest()[:16]
    base = os.path.join(
        cache_dir(), f"{os.path.basename(str(data)).removesuffix('.zip')}_{res}px_{key}"
    )
    if not os.path.exists(base + ".json"):
        os.makedirs(cache_dir(), exist_ok=True)
        _build_cache(data, res, files, base, say, table)
    meta = json.load(open(base + ".json"))
    n = len(meta["labels"])
    images = np.memmap(base + ".u8", dtype=np.uint8, mode="r", shape=(n, res, res, 3))
    for note in meta.get("notes", []):
        say(note)
    if meta["skipped"]:
        of, names = n + meta["skipped"], few(meta.get("skipped_files", []), meta["skipped"])
        say(f"skipped {meta['skipped']} unreadable or corrupt file(s) of {of}: {names}")
    return ImageSet(images, np.array(meta["labels"], dtype=np.int64), meta["classes"])


def few(names, total=None, k=3):
    """'a.png, b.png, c.png and 4 more': the first k names of a list (of `total`, if longer)."""
    total = len(names) if total is None else total
    return ", ".join(names[:k]) + (f" and {total - k} more" if total > k else "")


def read_labels(path, columns=None):
    """A labels CSV -> {"columns", "rows": {file: (line, values)}, "sha1"}; one-line errors."""
    if not os.path.isfile(path):
        raise UserError(f"labels file {path!r} not found")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        lines = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    header = [h.strip() for h in lines[0]] if lines else []
    if "file" not in header:
        raise UserError(f"{path}: no 'file' column in its first line ({', '.join(header)})")
    attrs = [h for h in header if h != "file"]
    columns = [c.strip() for c in columns] if columns else attrs  # 'hair, eyes' as 'hair,eyes'
    for c in columns:
        if c not in attrs:
            raise UserError(f"{path}: no column {c!r} (columns: {', '.join(header)})")
    if not columns:
        raise UserError(f"{path}: no attribute columns besides 'file'")
    if len(set(columns)) < len(columns):
        raise UserError(f"--label-columns names a column twice: {','.join(columns)}")
    idx = [header.index(c) for c in columns]
    rows, fi = {}, header.index("file")
    for line, row in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        name = row[fi].strip().replace("\\", "/").removeprefix("./")
        if name in rows:
            raise UserError(f"{path} lines {rows[name][0]} and {line}: two rows for {name}")
        rows[name] = (line, [row[i].strip() for i in idx])
    return {"columns": columns, "rows": rows, "sha1": hashlib.sha1(raw).hexdigest(), "path": path}


def _match_labels(files, table):
    """Files and CSV rows -> (kept files, their value lists, notes): rows without a file, images
    without a row, empty values and values seen once are left out, each counted in a note."""
    rows, cols, name = table["rows"], table["columns"], os.path.basename(table["path"])
    present = {f[0] for f in files}
    notes = []

    def note(what, examples):
        if examples:
            notes.append(f"{name}: skipped {len(examples)} {what} (first: {examples[0]})")

    note("row(s) whose file is not in the data", [f for f in rows if f not in present])
    note("image(s) with no row", [f[0] for f in files if f[0] not in rows])
    kept = [f for f in files if f[0] in rows]
    if not kept:
        example = (
            f"its first row names {next(iter(rows), 'nothing')}, the first image is {files[0][0]}"
        )
        raise UserError(f"{table['path']}: no row names an image in the data ({example})")
    empty = [f"{f[0]}, line {rows[f[0]][0]}" for f in kept if "" in rows[f[0]][1]]
    note("row(s) with an empty value", empty)
    kept = [f for f in kept if "" not in rows[f[0]][1]]
    while True:  # a value seen once is more likely a typo than a class: leave its row out
        counts = [{} for _ in cols]
        for f in kept:
            for j, v in enumerate(rows[f[0]][1]):
                counts[j][v] = counts[j].get(v, 0) + 1
        rare = [f for f in kept if any(counts[j][v] == 1 for j, v in enumerate(rows[f[0]][1]))]
        if not rare:
            break
        once = [
            f"{cols[j]}={v!r}, line {rows[f[0]][0]}"
            for f in rare
            for j, v in enumerate(rows[f[0]][1])
            if counts[j][v] == 1
        ]
        note("row(s) with a value seen only once", once)
        kept = [f for f in kept if f not in rare]
    if not kept:  # rows matched images, but every one was left out
        why = "; ".join(n.removeprefix(f"{name}: ") for n in notes)
        raise UserError(f"{table['path']}: every row that names an image was left out: {why}")
    return kept, [rows[f[0]][1] for f in kept], notes


def _build_cache(data, res, files, base, say, table=None):
    """Decode every image into a raw uint8 file (written in order, so it never sits in RAM whole),
    then publish it atomically: the .json is written last and marks the cache complete."""
    tmp = f"{base}.{os.getpid()}.tmp"
    notes, bad = [], []  # bad: the files that could not be read
    if files is None:
        arrays, labels, classes = make_toy(res)
        arrays.tofile(tmp)
        n_ok, skipped = len(arrays), 0
    else:
        if table:  # one value list per file, from the CSV's columns
            files, values, notes = _match_labels(files, table)
        else:  # or one value, its subfolder
            values = [[name] for name in _class_of([f[0] for f in files])[0]]
        say(f"decoding {len(files)} images from {data} at {res}x{res} (cached for later runs)...")
        k = len(values[0])
        vocab = [{v: i for i, v in enumerate(sorted({row[j] for row in values}))} for j in range(k)]
        zf = zipfile.ZipFile(data) if data.lower().endswith(".zip") else None

        def read(rel):
            try:
                if zf is not None:
                    return _decode(zf.read(rel), res)
                with open(os.path.join(data, rel), "rb") as f:
                    return _decode(f.read(), res)
            except Exception:  # truncated, corrupt, or not an image at all: skip and count
                return None

        labels, n_ok = [], 0
        with open(tmp, "wb") as out, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for start in range(0, len(files), 4096):  # in chunks: bounded memory for huge sets
                chunk = [f[0] for f in files[start : start + 4096]]
                for name, row, arr in zip(chunk, values[start:], pool.map(read, chunk)):
                    if arr is None:
                        bad.append(name)
                        continue
                    out.write(arr.tobytes())
                    labels.append([vocab[j][v] for j, v in enumerate(row)])
                    n_ok += 1
        skipped = len(files) - n_ok
        if n_ok == 0:
            os.remove(tmp)
            raise UserError(f"none of the {len(files)} image files in {data!r} could be read")
        names = [sorted(v, key=v.get) for v in vocab]
        for j in range(k):  # a value whose every image was corrupt is dropped
            used = sorted({row[j] for row in labels})
            remap = {c: i for i, c in enumerate(used)}
            for row in labels:
                row[j] = remap[row[j]]
            names[j] = [names[j][c] for c in used]
        if table and k > 1:
            classes = dict(zip(table["columns"], names))
        else:
            classes, labels = names[0], [row[0] for row in labels]
    os.replace(tmp, base + ".u8")
    labels = np.asarray(labels, dtype=np.int64).tolist()
    meta = {"labels": labels, "classes": classes, "skipped": skipped, "notes": notes}
    meta["skipped_files"] = bad[:3]
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, base + ".json")


# --- the built-in toy set -----------------------------------------------------------------------

TOY_HAIR = {
    "black": (40, 36, 48),
    "blonde": (240, 210, 110),
    "blue": (70, 110, 220),
    "pink": (245, 140, 190),
    "red": (200, 50, 45),
    "silver": (200, 205, 215),
}
TOY_EYES = [(60, 120, 230), (40, 170, 90), (200, 60, 60), (150, 80, 200), (230, 160, 40)]


def make_toy(res, n=4096, seed=0):
    """Procedural anime-style faces: hair colour is the class. Deterministic in (res, n, seed)."""
    rng = np.random.default_rng(seed)
    classes = list(TOY_HAIR)
    labels = np.arange(n) % len(classes)
    images = np.empty((n, res, res, 3), dtype=np.uint8)
    S = 128  # drawn at 128 px, then resized with an antialiasing filter
    for i in range(n):
        r = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        hair = tuple(int(c * r(0.85, 1.1)) for c in TOY_HAIR[classes[labels[i]]])
        hair_dark = tuple(int(c * 0.7) for c in hair)
        eye = TOY_EYES[rng.integers(len(TOY_EYES))]
        skin = (255, int(r(215, 235)), int(r(195, 215)))
        im = Image.new("RGB", (S, S), tuple(int(rng.integers(150, 256)) for _ in range(3)))
        d = ImageDraw.Draw(im)
        cx, cy, s = S / 2, S / 2 + 6, r(0.8, 1.05)
        P = lambda x, y: (cx + x * s, cy + y * s)  # noqa: E731
        d.ellipse([P(-50, -62), P(50, 55)], fill=hair)  # hair behind the face
        d.rounded_rectangle([P(-50, -20), P(50, r(50, 75))], radius=14 * s, fill=hair)
        d.ellipse([P(-36, -42), P(36, 46)], fill=skin)  # face
        bangs = (
            [P(-46, -30)]
            + [P(-40 + 10 * k, -10 + 14 * (k % 2) - 12) for k in range(9)]
            + [P(46, -30)]
        )
        d.polygon([P(-46, -58), P(46, -58)] + bangs[::-1], fill=hair)
        ey, gap = r(4, 10), r(14, 18)
        for side in (-1, 1):  # eyes: white, coloured iris, pupil, highlight
            ex = side * gap
            d.ellipse(
                [P(ex - 10, ey - 12), P(ex + 10, ey + 12)], fill=(255, 255, 255), outline=hair_dark
            )
            d.ellipse([P(ex - 7, ey - 9), P(ex + 7, ey + 11)], fill=eye)
            d.ellipse([P(ex - 3, ey - 2), P(ex + 3, ey + 6)], fill=(20, 20, 30))
            d.ellipse([P(ex - 5, ey - 7), P(ex - 1, ey - 3)], fill=(255, 255, 255))
            d.line([P(ex - 11, ey - 14), P(ex + 9, ey - 16)], fill=hair_dark, width=2)
        my, mw = r(28, 33), r(3, 8)
        d.arc([P(-mw, my - 4), P(mw, my + 4)], 20, 160, fill=(170, 60, 70), width=2)  # mouth
        im = im.rotate(
            r(-15, 15),
            resample=Image.BICUBIC,
            center=(cx + r(-8, 8), cy + r(-8, 8)),
            translate=(r(-8, 8), r(-6, 6)),
            fillcolor=im.getpixel((0, 0)),
        )
        images[i] = np.asarray(im.resize((res, res), Image.LANCZOS))
    return images, labels, classes


# --- batches ------------------------------------------------------------------------------------


class Batches:
    """Infinite shuffled batches (x in [-1, 1] on `device`, y labels), reproducible from `seed`.
    Each epoch is a fixed permutation (and flip mask) from (seed, epoch); rank r of `world` takes
    every world-th index, a disjoint shard. `batch` is this rank's batch. The state is just
    (epoch, position), so resume draws exactly the batches an uninterrupted run would have."""

    def __init__(self, data, batch, device, seed=0, rank=0, world=1, flip=True):
        self.images, self.labels = data.images, torch.from_numpy(data.labels)
        self.batch, self.device, self.seed, self.rank, self.world, self.flip = (
            batch,
            device,
            seed,
            rank,
            world,
            flip,
        )
        self.shard = len(self.labels) // world
        if self.shard == 0:
            raise UserError(f"{len(self.labels)} images cannot be split across {world} processes")
        self.epoch, self.pos = 0, 0
        self._new_epoch()

    def _new_epoch(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.labels))
        flips = rng.random(len(self.labels)) < 0.5
        self.order = perm[self.rank :: self.world][: self.shard]
        self.flips = flips[self.rank :: self.world][: self.shard]

    def __iter__(self):
        return self

    def __next__(self):
        parts = []
        while sum(len(p) for p in parts) < self.batch:
            if self.pos == self.shard:
                self.epoch, self.pos = self.epoch + 1, 0
                self._new_epoch()
            take = min(self.batch - sum(len(p) for p in parts), self.shard - self.pos)
            parts.append(np.arange(self.pos, self.pos + take))
            self.pos += take
        j = np.concatenate(parts)
        idx = self.order[j]
        x = self.images[idx]  # (B, H, W, 3) uint8, a copy
        if self.flip:
            f = self.flips[j]
            # (B, H, W) of whole RGB pixels: 2x faster flips
            px = x.view(np.dtype((np.void, 3)))[..., 0]
            px[f] = px[f, :, ::-1]
        x = torch.from_numpy(x).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (B, 3, H, W) in [-1, 1]
        return x, self.labels[idx].to(self.device, non_blocking=True)

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], min(state["pos"], self.shard)
        self._new_epoch()


# --- pictures out -------------------------------------------------------------------------------


def make_grid(x, nrow=None, pad=2):
    """(N, 3, H, W) tensor in [-1, 1] -> PIL image, `nrow` images per row (default: square)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, _, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((3, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[
            :,
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = x[i]
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def save_picture(im, path, **options):
    """A PIL image to `path`, whole or not at all: written to path.tmp, then renamed. An OSError
    (a full disk, no permission) names `path`; no partial file is left behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp, kind = path + ".tmp", os.path.splitext(path)[1][1:].upper().replace("JPG", "JPEG")
    try:
        im.save(tmp, format=kind, **options)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_grid(x, path, nrow=None):
    return save_picture(make_grid(x, nrow), path)


def save_gif(frames, path, ms=80):
    """List of PIL images -> looping animated GIF."""
    return save_picture(
        frames[0], path, save_all=True, append_images=frames[1:], duration=ms, loop=0
    )


def save_progress_gif(samples_dir, path, max_frames=100):
    """progress.gif from the step_*.png grids in samples_dir (evenly thinned to max_frames)."""
    names = sorted(
        n for n in os.listdir(samples_dir) if n.startswith("step_") and n.endswith(".png")
    )
    if len(names) > max_frames:
        names = [names[round(i * (len(names) - 1) / (max_frames - 1))] for i in range(max_frames)]
    return save_gif(
        [Image.open(os.path.join(samples_dir, n)).convert("RGB") for n in names], path, ms=200
    )


def save_samples(out, step, images):
    """A run's pictures at a sample step: samples/step_XXXXXX.png (a tensor of images: 8 per row;
    or a picture already laid out by make_grid), progress.gif of all of those, and loss.png from
    log.jsonl (once it exists)."""
    path = os.path.join(out, "samples", f"step_{step:06d}.png")
    if isinstance(images, Image.Image):
        save_picture(images, path)
    else:
        save_grid(images, path, nrow=8)
    save_progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))
    if os.path.exists(os.path.join(out, "log.jsonl")):
        plot_losses(os.path.join(out, "log.jsonl"), os.path.join(out, "loss.png"))


def plot_losses(log_path, png_path, keys=None, size=(720, 360)):
    """Draw the `loss_*` series (or `keys`) of a log.jsonl against step into a PNG."""
    recs = [json.loads(line) for line in open(log_path) if line.strip()]
    keys = keys or sorted({k for r in recs for k in r if k.startswith("loss")})
    series = {
        k: [(r["step"], r[k]) for r in recs if math.isfinite(r.get(k, math.nan))] for k in keys
    }
    series = {k: v for k, v in series.items() if v}
    W, H, L, B = size[0], size[1], 56, 28
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    if not series:
        d.text((L, H // 2), "no losses logged yet", fill="black")
        return save_picture(im, png_path)
    xs = [s for v in series.values() for s, _ in v]
    ys = np.array([y for v in series.values() for _, y in v])
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = np.percentile(ys, 1), np.percentile(ys, 99)  # robust to a few spikes
    y0, y1 = (y0 - 0.05 * (y1 - y0 + 1e-8), y1 + 0.05 * (y1 - y0 + 1e-8))
    px = lambda s: L + (s - x0) / (x1 - x0) * (W - L - 10)  # noqa: E731
    py = lambda y: 10 + (y1 - min(max(y, y0), y1)) / (y1 - y0) * (H - 10 - B)  # noqa: E731
    d.rectangle([L, 10, W - 10, H - B], outline="black")
    for t in range(5):
        yv, xv = y0 + (y1 - y0) * t / 4, x0 + (x1 - x0) * t / 4
        d.text((4, py(yv) - 6), f"{yv:.3g}", fill="black")
        d.text((px(xv) - 10, H - B + 6), f"{int(xv)}", fill="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, (k, v) in enumerate(series.items()):
        c = colors[i % len(colors)]
        pts = [(px(s), py(y)) for s, y in v]
        d.line(pts if len(pts) > 1 else pts * 2, fill=c, width=2)
        d.text((L + 8, 14 + 14 * i), k, fill=c)
    return save_picture(im, png_path)
