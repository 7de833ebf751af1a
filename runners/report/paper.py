"""The papers' numbers, to stand beside ours: CIFAR test error (%) by what identifies a variant,
and He 2016a's ImageNet top-1 and top-5 error (Tables 2-4, `imagenet_lookup`).

He et al. 2016a ("Deep Residual Learning", Table 6) and He et al. 2016b ("Identity Mappings in
Deep Residual Networks", Tables 1-3). A number is found by `paper_key(params)`, a function of a
run's params (`runners.tracking.naming.run_params`: the axes unprefixed, the rest of the
architecture as `arch.*`, the data as `data.*`): the one place that maps the lab's names for a
shortcut kind, an activation order or a block onto the papers' rows. None = the paper has no
such row.

What each number is (the papers differ):
* 2016a Table 6 gives one number per depth without saying over how many runs, except ResNet-110:
  "best (mean ± std)" over 5 runs, 6.43 (6.61 ± 0.16).
* 2016b reports the median of 5 runs (Tables 1-3); "fail" is Table 1's note: test error above
  20%. Its Table 4 gives the median and, in parentheses, mean ± std of 5 runs.
* A number stands beside the net it was measured on, shortcut option included: the ResNet-110s of
  both papers use option A (2016b's "original" 6.61 is 2016a's option-A mean), the bottleneck nets
  of 2016b (164, 1001) use projections where the shape changes, option B, as
  KaimingHe/resnet-1k-layers does; a run with the other option gets no paper number.
* 2016b Table 4's 4.62 is the authors' code (KaimingHe/resnet-1k-layers: batch 64, 200 epochs,
  the `resnet-1k-layers` recipe), set beside runs of that recipe only; the paper's own 4.92 is
  batch 128 by 2016b's recipe.
"""
from __future__ import annotations

from dataclasses import dataclass

# Table rows are keyed by (dataset, depth, block, form); form names the shortcut / activation
# variant (see `paper_key`).
Key = tuple[str, int, str, str]
# The forms that keep the identity shortcut (2016b Table 2's activation orders): their numbers
# were measured with one option where the shape changes (PaperNumber.shortcut).
IDENTITY_FORMS = ("original", "bn-after-add", "relu-before-add", "relu-only-preact", "full-preact")


@dataclass(frozen=True)
class PaperNumber:
    paper: str  # "He 2016a" | "He 2016b"
    tables: str  # where it is printed, e.g. "Table 6", "Tables 1-3"
    error: float | None  # test error (%); None: the paper reports "fail"
    stat: str  # what the number is over the paper's runs
    shortcut: str | None = None  # the identity shortcut's option it was measured with (A | B); None: any
    recipe: str | None = None  # the lab's recipe preset it belongs to (train.recipe); None: the papers' own

    def text(self) -> str:
        return "fail" if self.error is None else f"{self.error:.2f}"


HE2016A = "He 2016a"
HE2016B = "He 2016b"
STAT = {HE2016A: "as printed; ResNet-110: best of 5", HE2016B: "median of 5"}
PAPERS = (HE2016A, HE2016B)


def _table6() -> dict[Key, PaperNumber]:
    rows = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
    out = {}
    for depth, err in rows.items():
        stat = "best of 5; mean ± std 6.61 ± 0.16" if depth == 110 else "one number (runs not stated)"
        out[("cifar10", depth, "basic", "A")] = PaperNumber(HE2016A, "Table 6", err, stat, shortcut="A")
    return out


def _he2016b() -> dict[Key, PaperNumber]:
    out: dict[Key, PaperNumber] = {}

    def put(dataset, depth, block, form, err, tables, stat=STAT[HE2016B], recipe=None):
        # The ResNet-110s (basic and 1-layer) are option A, the bottleneck nets option B (module
        # docstring); the shortcut kinds of Table 1 replace the identity and need no option.
        shortcut = ("B" if block == "bottleneck" else "A") if form in IDENTITY_FORMS else None
        out[(dataset, depth, block, form)] = PaperNumber(HE2016B, tables, err, stat, shortcut, recipe)

    # Table 1: shortcut kinds on ResNet-110 (post-activation, CIFAR-10); "fail": test error > 20%.
    put("cifar10", 110, "basic", "original", 6.61, "Tables 1-3")
    put("cifar10", 110, "basic", "scale(0,1)", None, "Table 1")  # "This is a plain net"
    put("cifar10", 110, "basic", "scale(0.5,1)", None, "Table 1")  # 0.5 on the shortcut alone
    put("cifar10", 110, "basic", "scale(0.5,0.5)", 12.35, "Table 1")  # 0.5 on both: "frozen gating"
    # Exclusive gating: b_g searched over 0 to -10 in steps of -1 (Sec. 3.1); Table 1 prints
    # 0 to -5 as fail, -6 and -7; -8 to -10 are searched but not printed (no number here).
    for b in range(-5, 1):
        put("cifar10", 110, "basic", f"gate-exclusive({b})", None, "Table 1")
    put("cifar10", 110, "basic", "gate-exclusive(-6)", 8.70, "Table 1")
    put("cifar10", 110, "basic", "gate-exclusive(-7)", 9.81, "Table 1")
    put("cifar10", 110, "basic", "gate-shortcut(0)", 12.86, "Table 1")
    put("cifar10", 110, "basic", "gate-shortcut(-6)", 6.91, "Table 1")
    put("cifar10", 110, "basic", "conv1x1", 12.22, "Table 1")
    put("cifar10", 110, "basic", "dropout(0.5)", None, "Table 1")
    # Table 2: activation orders (2016b Fig. 4 (a)-(e)), ResNet-110 / ResNet-164.
    for form, e110, e164 in (("bn-after-add", 8.17, 6.50), ("relu-before-add", 7.84, 6.14),
                             ("relu-only-preact", 6.71, 5.91), ("full-preact", 6.37, 5.46)):
        put("cifar10", 110, "basic", form, e110, "Table 2" if form != "full-preact" else "Tables 2-3")
        put("cifar10", 164, "bottleneck", form, e164, "Table 2" if form != "full-preact" else "Tables 2-3")
    put("cifar10", 164, "bottleneck", "original", 5.93, "Tables 2-3")
    # Table 3: original vs full pre-activation.
    for dataset, depth, block, orig, pre in (("cifar10", 110, "1-layer", 9.90, 8.91),
                                             ("cifar10", 1001, "bottleneck", 7.61, 4.92),
                                             ("cifar100", 164, "bottleneck", 25.16, 24.33),
                                             ("cifar100", 1001, "bottleneck", 27.82, 22.71)):
        put(dataset, depth, block, "original", orig, "Table 3")
        put(dataset, depth, block, "full-preact", pre, "Table 3")
    # Table 4, pre-activation ResNet-1001: median (mean ± std) of 5 runs. The CIFAR-10 row at
    # batch 128 is Table 3's 4.92 with its mean; batch 64 is the authors' code (its README).
    put("cifar10", 1001, "bottleneck", "full-preact", 4.92, "Tables 3-4", "median of 5; mean ± std 4.89 ± 0.14")
    put("cifar100", 1001, "bottleneck", "full-preact", 22.71, "Tables 3-4", "median of 5; mean ± std 22.68 ± 0.22")
    return out


def _recipe_rows() -> dict[tuple[Key, str], PaperNumber]:
    """Rows measured with a recipe other than the papers', by (key, train.recipe)."""
    return {(("cifar10", 1001, "bottleneck", "full-preact"), "resnet-1k-layers"): PaperNumber(
        HE2016B, "Table 4", 4.62, "median of 5; mean ± std 4.69 ± 0.20", "B", "resnet-1k-layers")}


NUMBERS: dict[str, dict[Key, PaperNumber]] = {HE2016A: _table6(), HE2016B: _he2016b()}
RECIPE_NUMBERS: dict[tuple[Key, str], PaperNumber] = _recipe_rows()


# -- He 2016a's ImageNet numbers ------------------------------------------------------------------
# Top-1 and top-5 error (%) on the ImageNet validation set (the lab's test split: the ImageFolder's
# test/). Table 2: 10-crop top-1 of the plain and option-A nets; Table 3: 10-crop top-1 and top-5
# ("VGG-16 28.07 / 9.33 ..."); Table 4: single models, the multi-scale fully-convolutional
# testing of Sec. 3.4. The 50/101/152-layer nets are option B (Sec. 4.1) with the stride in the
# first 1x1 (the Caffe models). A row is keyed by (depth, form): form "plain" or the shortcut.
ImageNetKey = tuple[int, str]
TESTINGS = ("1-crop", "10-crop", "multi-scale")  # the paper reports the last two


@dataclass(frozen=True)
class ImageNetNumber:
    tables: str  # where it is printed
    testing: str  # one of TESTINGS
    top1: float
    top5: float | None  # Table 2 prints top-1 only

    def text(self) -> str:
        return f"{self.top1:.2f}" + ("" if self.top5 is None else f" / {self.top5:.2f}")


def _he2016a_imagenet() -> dict[str, dict[ImageNetKey, ImageNetNumber]]:
    ten = {(18, "plain"): ImageNetNumber("Table 2", "10-crop", 27.94, None),
           (18, "A"): ImageNetNumber("Table 2", "10-crop", 27.88, None)}
    for key, top1, top5, tables in (((34, "plain"), 28.54, 10.02, "Tables 2-3"), ((34, "A"), 25.03, 7.76, "Tables 2-3"),
                                    ((34, "B"), 24.52, 7.46, "Table 3"), ((34, "C"), 24.19, 7.40, "Table 3"),
                                    ((50, "B"), 22.85, 6.71, "Table 3"), ((101, "B"), 21.75, 6.05, "Table 3"),
                                    ((152, "B"), 21.43, 5.71, "Table 3")):
        ten[key] = ImageNetNumber(tables, "10-crop", top1, top5)
    multi = {key: ImageNetNumber("Table 4", "multi-scale", top1, top5)
             for key, top1, top5 in (((34, "B"), 21.84, 5.71), ((34, "C"), 21.53, 5.60), ((50, "B"), 20.74, 5.25),
                                     ((101, "B"), 19.87, 4.60), ((152, "B"), 19.38, 4.49))}
    return {"10-crop": ten, "multi-scale": multi}


IMAGENET = _he2016a_imagenet()


def imagenet_key(params: dict) -> ImageNetKey | None:
    """(depth, form) of an ImageNet-family run, or None for a net He 2016a's tables do not have
    (a pre-activation or He 2016b shortcut, a custom stage layout, v1.5's bottleneck)."""
    if _get(params, "family", default="cifar") != "imagenet":
        return None
    shortcut = _shortcut(params)
    depth = _num(_get(params, "depth"), float("nan"))
    order = _get(params, "order", default="post")
    if depth != depth or order != "post" or shortcut not in ("none", "A", "B", "C"):
        return None
    if _get(params, "bottleneck_stride", default="1x1") != "1x1" and _get(params, "block") == "bottleneck":
        return None
    return int(depth), "plain" if shortcut == "none" else shortcut


def imagenet_lookup(params: dict) -> dict[str, ImageNetNumber]:
    """testing ("10-crop", "multi-scale") -> He 2016a's number for the run with these params."""
    key = imagenet_key(params)
    return {} if key is None else {t: rows[key] for t, rows in IMAGENET.items() if key in rows}

# -- from a run's params to a paper's row ---------------------------------------------------------
# The lab's names for what the papers vary. Adapt here when the architecture's fields change:
# each maps a param value (unprefixed axis or `arch.*`) to the paper's form.
ORDERS = {"a": "original", "b": "bn-after-add", "c": "relu-before-add", "d": "relu-only-preact",
          "e": "full-preact",
          # ArchSpec.order's values (models/spec.py ORDERS)
          "post": "original", "bn-after-add": "bn-after-add", "relu-before-add": "relu-before-add",
          "relu-preact": "relu-only-preact", "preact": "full-preact"}
ONE_LAYER_BLOCKS = ("single", "1-layer", "one-layer", "1layer", "simple")
SCALE_SHORTCUTS = ("scale", "constant", "constant_scaling", "scaling")
EXCLUSIVE_GATES = ("gate", "gating", "exclusive_gate", "exclusive_gating")
SHORTCUT_GATES = ("shortcut_gate", "shortcut_gating", "shortcut-gate")
DROPOUT_SHORTCUTS = ("dropout", "dropout_shortcut")


def _get(params: dict, *names: str, default: str | None = None) -> str | None:
    """The first of `names` present, unprefixed (an axis) or as `arch.<name>`."""
    for n in names:
        for key in (n, f"arch.{n}"):
            if params.get(key) not in (None, "", "none"):
                return params[key]
    return default


def _shortcut(params: dict) -> str:
    """The shortcut kind; "none" (a plain net) is a value here, not a missing param."""
    return params.get("shortcut") or params.get("arch.shortcut") or "A"


def _num(s: str | None, default: float) -> float:
    try:
        return float(s) if s is not None else default
    except ValueError:
        return default


def _g(x: float) -> str:
    return f"{x:g}"


def dataset_of(params: dict) -> str | None:
    """cifar10 / cifar100, also for an ImageFolder copy whose folder name says which."""
    name = (params.get("data.name") or "").rstrip("/").lower()
    last = name.rsplit("/", 1)[-1]
    for d in ("cifar100", "cifar10"):  # cifar100 first: "cifar10" is its prefix
        if last == d or last.startswith(d + "-") or last.startswith(d + "_"):
            return d
    return None


def form_of(params: dict) -> str | None:
    """The papers' name of a run's shortcut/activation variant, or None when no paper has one."""
    shortcut = _shortcut(params)
    preact = _get(params, "preact", default="false") == "true"
    order = _get(params, "order", "act_order", "activation_order", "preact_order")
    if order is not None:
        form = ORDERS.get(order.lower().strip("()"))
    else:
        form = "full-preact" if preact else "original"
    if shortcut in ("A", "B"):  # identity shortcuts (2016b does not print its option)
        return form
    if form != "original":
        return None  # 2016b varies shortcuts on the original order only
    if shortcut == "C":
        return "conv1x1"
    if shortcut in SCALE_SHORTCUTS:
        s = _num(_get(params, "shortcut_scale", "scale"), 0.5)
        f = _num(_get(params, "branch_scale", "residual_scale"), s)
        return f"scale({_g(s)},{_g(f)})"
    if shortcut in EXCLUSIVE_GATES + SHORTCUT_GATES:
        b = _num(_get(params, "gate_bias", "gate_init"), 0)
        kind = "shortcut" if shortcut in SHORTCUT_GATES else "exclusive"
        return f"gate-{kind}({_g(b)})"
    if shortcut in DROPOUT_SHORTCUTS:
        return f"dropout({_g(_num(_get(params, 'shortcut_dropout', 'dropout'), 0.5))})"
    return None


def paper_key(params: dict) -> Key | None:
    """(dataset, depth, block, form) of a run, or None for a net no paper's table has (plain,
    not CIFAR, not a CIFAR-family ResNet)."""
    if _get(params, "family", default="cifar") != "cifar" or _shortcut(params) == "none":
        return None
    dataset, form = dataset_of(params), form_of(params)
    depth = _num(_get(params, "depth"), float("nan"))
    if dataset is None or form is None or depth != depth:
        return None
    block = _get(params, "block", default="basic")
    if block in ONE_LAYER_BLOCKS:
        block = "1-layer"
    if form == "original" and _shortcut(params) == "A":
        form = "A"  # 2016a Table 6's option A, which is also 2016b's original
    return (dataset, int(depth), block, form)


def lookup(params: dict) -> dict[str, PaperNumber]:
    """paper -> its number for the run with these params (empty when no paper has one): the row
    of the run's net, measured with the run's shortcut option, and of its recipe where a paper
    printed one for that recipe (2016b Table 4's batch-64 code)."""
    key = paper_key(params)
    if key is None:
        return {}
    shortcut, recipe = _shortcut(params), params.get("train.recipe")
    out = {}
    for paper, table in NUMBERS.items():
        k = key
        if paper == HE2016B and key[3] == "A":
            k = key[:3] + ("original",)
        num = RECIPE_NUMBERS.get((k, recipe)) if recipe else None
        num = num if num is not None and num.paper == paper else table.get(k)
        if num is not None and num.shortcut in (None, shortcut):
            out[paper] = num
    return out


def numbers_for(params: dict) -> dict:
    """Every paper number for a run with these params, JSON-ready (`ablate run --dry-run --json`):
    {"He 2016a": {"tables", "testing", "top1", "top5"} per testing, or {"tables", "error", "text", "stat"}
    for a CIFAR row}."""
    out: dict = {}
    for p, num in lookup(params).items():
        out[p] = {"tables": num.tables, "error": num.error, "text": num.text(), "stat": num.stat}
    for testing, num in imagenet_lookup(params).items():
        out.setdefault(HE2016A, {})[testing] = {"tables": num.tables, "top1": num.top1, "top5": num.top5}
    return out


# -- the papers' recipe ---------------------------------------------------------------------------
# He 2016a Sec. 4.2 (also 2016b's CIFAR recipe): SGD, batch 128 on 2 GPUs (so BatchNorm sees 64
# images per GPU), lr 0.1 /10 at 32k and 48k, stop at 64k iterations, momentum 0.9, weight decay
# 1e-4, per-pixel mean subtraction, pad-4 crops and flips, fp32; the 45k/5k split only chose the
# schedule, the final nets train on all 50k images; ResNet-110 warms up at lr 0.01.
PAPER_RECIPE = {"train.batch_size": 128, "train.lr": 0.1, "train.momentum": 0.9, "train.weight_decay": 1e-4,
                "train.gamma": 0.1}
PAPER_BN_BATCH = 64
PAPER_ITERATIONS = 64_000
# A run's precision other than the papers' fp32 (runners/train/config.py TrainConfig.precision).
PRECISION_NOTES = {"bf16": "bf16 autocast", "tf32": "TF32 matmuls and convolutions"}


def recipe_differences(params: dict, *, iterations: float | None = None, precision: str | None = None,
                       device: str | None = None) -> list[str]:
    """What a run did differently from its paper's recipe (He 2016a's ImageNet recipe for the
    imagenet family, the papers' CIFAR recipe otherwise), one phrase each; only what its params
    (and `iterations` done, `precision`/`device` as trained) say, nothing guessed."""
    if _get(params, "family", default="cifar") == "imagenet":
        out = _imagenet_differences(params, iterations)
    else:
        out = _cifar_differences(params, iterations)
    if _get(params, "block") == "bottleneck" and _get(params, "bottleneck_stride", default="1x1") == "3x3":
        out.append("bottlenecks stride in the 3x3 (torchvision's v1.5; the papers' stride in the first 1x1)")
    if precision in PRECISION_NOTES:
        out.append(PRECISION_NOTES[precision] + (f" on {device}" if device else "") + " (papers: fp32)")
    return out


def _cifar_differences(params: dict, iterations: float | None) -> list[str]:
    out = []
    name = params.get("data.name")
    if name == "synthetic":
        out.append("synthetic data, not CIFAR")
    elif name not in (None, "cifar10", "cifar100"):
        out.append(f"images from the ImageFolder {name} (a re-encoded copy, e.g. JPEG), not the CIFAR binaries")
    subset = _num(params.get("data.subset"), float("nan"))
    if subset == subset:
        out.append(f"a subset of {int(subset)} training images, not 50k")
    val = _num(params.get("data.val_size"), float("nan"))
    if val == val and val > 0:
        out.append(f"{int(val)} training images held out for validation (the papers' final nets train on "
                   "all; their 45k/5k split only chose the schedule)")
    epochs = _num(params.get("train.epochs"), float("nan"))
    its = _num(params.get("train.iterations"), float("nan"))
    done = f" ({int(iterations)} iterations)" if iterations else ""
    if epochs == epochs:
        out.append(f"{int(epochs)} epochs{done} vs the papers' 64k iterations")
    elif its == its and its != PAPER_ITERATIONS:
        out.append(f"{int(its)} iterations vs the papers' 64k")
    for key, want in PAPER_RECIPE.items():
        got = _num(params.get(key), float("nan"))
        if got == got and abs(got - want) > 1e-12 * max(1.0, abs(want)):
            out.append(f"{key.split('.', 1)[1]} {params[key]} (papers: {_g(want)})")
    if params.get("train.schedule", "step") != "step":
        out.append(f"{params['train.schedule']} lr schedule (papers: step)")
    if params.get("train.milestones", "none") != "none":
        out.append(f"lr milestones {params['train.milestones']} (papers: 1/2 and 3/4 of the run)")
    if params.get("train.nesterov") == "true":
        out.append("Nesterov momentum")
    depth = _num(_get(params, "depth"), 0)
    warm = params.get("train.warmup")
    if warm == "true" and depth < 110:
        out.append("lr 0.01 warm-up (2016a: only for ResNet-110)")
    elif warm == "false" and depth >= 110:
        out.append("no lr 0.01 warm-up (2016a warms ResNet-110 up)")
    if params.get("data.normalize", "pixel_mean") != "pixel_mean":
        out.append(f"{params['data.normalize']} normalization (papers: per-pixel mean)")
    if params.get("data.augment") == "false":
        out.append("no augmentation (papers: pad-4 crops and flips)")
    bn = _num(_get(params, "bn_batch"), float("nan"))
    batch = _num(params.get("train.batch_size"), float("nan"))
    seen = bn if bn == bn else batch
    if seen == seen and seen != PAPER_BN_BATCH:
        out.append(f"BatchNorm statistics over {int(seen)} images (papers: {PAPER_BN_BATCH} per GPU, "
                   "batch 128 on 2 GPUs)")
    return out


# He 2016a Sec. 3.4, ImageNet: SGD batch 256 on 8 GPUs (BN over 32 images each), lr 0.1 divided by
# 10 when the error plateaus, up to 60e4 iterations, momentum 0.9, weight decay 1e-4, no dropout;
# shorter side in [256, 480], 224 crops and flips, per-pixel mean, AlexNet's PCA lighting; the
# 1.28M training images; the tables' testing is 10-crop (Tables 2-3) or multi-scale (Table 4).
IMAGENET_RECIPE = {"train.batch_size": 256, "train.lr": 0.1, "train.momentum": 0.9, "train.weight_decay": 1e-4,
                   "train.gamma": 0.1, "data.crop": 224, "data.lighting": 0.1}
IMAGENET_BN_BATCH = 32
IMAGENET_ITERATIONS = 600_000


def _imagenet_differences(params: dict, iterations: float | None) -> list[str]:
    out = []
    name = (params.get("data.name") or "").rstrip("/")
    if name and "imagenet" not in name.rsplit("/", 1)[-1].lower():
        out.append(f"images from {name}, not ImageNet (by the folder's name)")
    subset = _num(params.get("data.subset"), float("nan"))
    if subset == subset:
        out.append(f"a subset of {int(subset)} training images, not 1.28M")
    val = _num(params.get("data.val_size"), float("nan"))
    if val == val and val > 0:
        out.append(f"{int(val)} training images held out for validation (the paper trains on all 1.28M; the "
                   "ImageNet validation set is the test split here)")
    epochs = _num(params.get("train.epochs"), float("nan"))
    its = _num(params.get("train.iterations"), float("nan"))
    done = f" ({int(iterations)} iterations)" if iterations else ""
    if epochs == epochs:
        out.append(f"{int(epochs)} epochs{done} vs the paper's up to 60e4 iterations")
    elif its == its and its != IMAGENET_ITERATIONS:
        out.append(f"{int(its)} iterations vs the paper's up to 60e4")
    for key, want in IMAGENET_RECIPE.items():
        got = _num(params.get(key), float("nan"))
        if got == got and abs(got - want) > 1e-12 * max(1.0, abs(want)):
            out.append(f"{key.split('.', 1)[1]} {params[key]} (paper: {_g(want)})")
    schedule = params.get("train.schedule", "step")
    if schedule != "plateau":
        milestones = params.get("train.milestones", "none")
        out.append(f"{schedule} lr schedule" + (f" at {milestones}" if schedule == "step" and milestones != "none"
                                                else "") + " (paper: /10 when the error plateaus)")
    if params.get("train.nesterov") == "true":
        out.append("Nesterov momentum")
    if params.get("data.scale", "none") not in ("256,480", "none"):
        out.append(f"shorter side in [{params['data.scale'].replace(',', ', ')}] (paper: [256, 480])")
    if params.get("data.crop_mode", "scale") != "scale":
        out.append(f"{params['data.crop_mode']} crops (paper: scale augmentation)")
    if params.get("data.normalize", "pixel_mean") != "pixel_mean":
        out.append(f"{params['data.normalize']} normalization (paper: per-pixel mean)")
    if _num(params.get("data.color_jitter"), 0) > 0:
        out.append(f"colour jitter {params['data.color_jitter']} (fb.resnet.torch's; not in the paper)")
    if params.get("data.ten_crop") == "false":
        out.append("center-crop testing (Tables 2-3: 10-crop)")
    sides = params.get("data.multi_scale", "none")
    if sides not in ("none", "224,256,384,480,640"):
        out.append(f"multi-scale testing at shorter sides {sides.replace(',', ', ')} (Table 4: 224, 256, 384, 480, "
                   "640)")
    if sides != "none" and params.get("data.multi_scale_flip") == "false":
        out.append("multi-scale testing without mirror images")
    width = _num(_get(params, "width"), 1)
    if width != 1:
        out.append(f"width x{_g(width)} (paper: 64 filters in the first stage)")
    bn = _num(_get(params, "bn_batch"), float("nan"))
    batch = _num(params.get("train.batch_size"), float("nan"))
    seen = bn if bn == bn else batch
    if seen == seen and seen != IMAGENET_BN_BATCH:
        out.append(f"BatchNorm statistics over {int(seen)} images (paper: {IMAGENET_BN_BATCH} per GPU, batch 256 "
                   "on 8 GPUs)")
    return out
