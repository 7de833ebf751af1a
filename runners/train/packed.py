"""Packed training: K models with the same parameter shapes trained as one step (horizontal fusion).

    results = train_packed([Member(arch, cfg.replace(seed=s), tracker=t, checkpoint_dir=d) for ...], data)

A ResNet-20 step at batch 128 is thousands of small kernels that leave a big GPU idle; K models
stacked into one (HFTA, Wang et al. MLSys 2021) do K times the work per kernel at about the same
launch cost. The stacking is torch's own: `torch.func.functional_call` of one template network
under `vmap` over the members' stacked parameters and buffers (a batched convolution becomes one
grouped convolution, a batched BN one BN over K x C channels).

Each member is what it would be alone, because each is its own `Run` (runners/train/trainer.py)
and only the arithmetic is shared:
* its initial weights (its seed), its data order and augmentation draws (its own generator);
* its BN statistics (ghost BN too: the template's modules run per member under vmap);
* its optimizer state: SGD as torch.optim.SGD computes it (weight decay into the gradient,
  momentum buffer, Nesterov), vectorised over a flat (K, N) copy of the parameters with
  per-member lr, momentum and weight decay; its lr schedule and warm-up;
* its checkpoint (written each epoch, in the format of a run alone, so either resumes the other),
  its tracker's run (curves, tags, plus `pack` and `pack_id`), its `on_epoch`.

Same-shape twins pack: the plain twin of an option-A net has exactly its parameters, so the
template is the option-A net with a per-member gain (1 or 0) on every identity term, and a
plain member's gain 0 leaves branch + 0 * h = branch, exactly its own forward.

A member whose loss turns non-finite is frozen (its state as at that check is kept, later steps
of the pack no longer touch it) and ends `diverged`; the others go on: nothing in a vmapped step
mixes members. Members at different epochs (a pack killed between two checkpoint writes) train
in turn, the ones behind first, until they are level.

With train.compile, the vmapped forward and loss are compiled once per pack (`packed_loss`;
`torch.compile` of a `vmap`, one graph, train.compile_mode as given; the backward and the SGD
update stay eager). Whether compile or CUDA graphs help a packed step is what `ablate bench
--pack --compile` and `ablate doctor` measure.

Results agree with separate runs to float tolerance, not bit for bit: a grouped convolution adds
in another order than K single ones (tests/train/test_packed.py states the tolerance).
"""
from __future__ import annotations

import dataclasses
import math
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from models.blocks import PadShortcut
from models.fields import fields_of
from models.network import ResNet
from models.spec import ArchSpec

from ..errors import ConfigError
from . import distributed
from .checkpoint import load_checkpoint
from .config import DataConfig, TrainConfig
from .data import Dataset, load_dataset
from .evaluation import layer_responses
from .execution import MixedPrecision, eval_batch_size, resolve_device, runtime, sync
from .stream import StreamDataset
from .trainer import Run, TrainResult

if TYPE_CHECKING:
    from ..tracking.tracker import Tracker

# The recipe fields a member may have of its own; every other field (length, batch, device,
# precision, determinism, ...) is the pack's and must agree.
PER_MEMBER = ("seed", "lr", "momentum", "weight_decay", "nesterov", "schedule", "milestones", "gamma",
              "plateau_patience", "plateau_threshold", "warmup", "warmup_lr", "warmup_until_error",
              "warmup_iterations", "probe", "recipe")


@dataclass
class Member:
    """One model of a pack: what `trainer.train` would be called with."""

    arch: ArchSpec
    cfg: TrainConfig
    tracker: Tracker | None = None
    checkpoint_dir: str | Path | None = None
    on_epoch: Callable[[int, dict], None] | None = None
    model_name: str | None = None
    guard: Callable[[], None] | None = None  # before each write of its results (trainer.train's guard)


# -- which models pack ------------------------------------------------------------------------------
def template(arch: ArchSpec) -> ArchSpec:
    """The network a member is run as: itself, or for a plain net its option-A twin (the same
    parameters; the identity terms then get gain 0)."""
    if arch.shortcut != "none":
        return arch
    defaults = {f.name: f.default for f in fields_of(arch, "shortcut")}
    return arch.replace(shortcut="A", **defaults)


def unpackable(arch: ArchSpec) -> str | None:
    """Why `arch` cannot be packed, or None."""
    if arch.shortcut == "dropout":
        return "shortcut dropout draws its masks from the global generator, which vmap cannot split per model"
    return None


def unpackable_recipe(arch: ArchSpec, cfg: TrainConfig) -> str | None:
    """Why `arch` trained by `cfg` cannot be packed, or None: the packed SGD decays every
    parameter alike, so a gate's b_g kept out of weight decay trains alone."""
    if arch.shortcut in ("gate", "shortcut-gate") and not cfg.gate_bias_decay:
        return "train.gate_bias_decay false: the packed step decays every parameter"
    return None


def pack_key(arch: ArchSpec, cfg: TrainConfig, data: DataConfig) -> tuple | None:
    """Models with equal keys pack together; None for one that never packs."""
    if unpackable(arch) or unpackable_recipe(arch, cfg):
        return None
    shared = tuple((k, v) for k, v in dataclasses.asdict(cfg).items() if k not in PER_MEMBER)
    return template(arch), shared, data


def check_packable(members: list[Member], data_cfg: DataConfig) -> None:
    """ConfigError naming the first member that does not pack with the first."""
    if not members:
        raise ConfigError("a pack needs at least one model")
    for m in members:
        why = unpackable(m.arch) or unpackable_recipe(m.arch, m.cfg)
        if why:
            raise ConfigError(f"{m.model_name or m.arch.shortcut}: cannot pack ({why}); train it alone")
    first = pack_key(members[0].arch, members[0].cfg, data_cfg)
    for m in members[1:]:
        key = pack_key(m.arch, m.cfg, data_cfg)
        if key[0] != first[0]:
            raise ConfigError(f"{m.model_name or 'a model'} does not pack with {members[0].model_name or 'the first'}: "
                              "their parameters differ (only seeds, recipe values and a plain net with its option-A "
                              "twin pack)")
        for (k, a), (_, b) in zip(first[1], key[1]):
            if a != b:
                raise ConfigError(f"packed models must share train.{k} (got {a!r} and {b!r}); only "
                                  f"{', '.join(PER_MEMBER)} may differ")


def train_packed(members: list[Member], data: DataConfig | Dataset, *,
                 progress: bool = False) -> list[TrainResult | Exception]:
    """Train `members` as one pack on `data`; each member's TrainResult, or the exception its
    `on_epoch` raised (e.g. optuna.TrialPruned: that member stops there, the others go on).
    KeyboardInterrupt and the like stop the whole pack, every member checkpointed at its last epoch."""
    members = [dataclasses.replace(m, arch=m.arch.validate(), cfg=m.cfg.validate()) for m in members]
    data_cfg = data.config if isinstance(data, (Dataset, StreamDataset)) else data
    check_packable(members, data_cfg)
    if distributed.current().distributed:
        raise ConfigError("packed training runs in one process: leave resources.gpus_per_trial at 1")
    cfg = members[0].cfg
    device = resolve_device(cfg.device)
    with runtime(cfg, device):
        dataset = (data if isinstance(data, (Dataset, StreamDataset)) else load_dataset(data, device))
        if isinstance(dataset, StreamDataset):
            raise ConfigError("packed training needs the dataset in memory (dataset.loader memory); "
                              "a streamed dataset trains one model at a time")
        dataset = dataset.to(device)
        runs = [Run(m.arch, m.cfg, dataset, device, m.tracker, m.checkpoint_dir, m.model_name) for m in members]
        for r, m in zip(runs, members):
            r.guard = m.guard or r.guard
        return Pack(runs, [m.on_epoch for m in members]).run(progress)


# -- the template network -----------------------------------------------------------------------------
class GainedIdentity(nn.Identity):
    """An identity shortcut times a per-member gain (1: residual, 0: its plain twin). Still an
    nn.Identity, so a pre-activation block reads the raw input for it, as for the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gain", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class GainedPad(PadShortcut):
    """Option A's zero-padding shortcut times a per-member gain."""

    def __init__(self, pad: PadShortcut) -> None:
        super().__init__(pad.in_ch, pad.out_ch, pad.stride, pad.pad)
        self.register_buffer("gain", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.gain


def template_net(arch: ArchSpec, num_classes: int, amp: bool, gained: bool) -> MixedPrecision:
    """The pack's network, on the meta device (every tensor comes from the stack); with `gained`,
    every identity term carries a gain buffer."""
    with torch.device("meta"):
        model = ResNet(arch, num_classes=num_classes)
        if gained:
            for block in model.blocks():
                if isinstance(block.shortcut, PadShortcut):
                    block.shortcut = GainedPad(block.shortcut)
                elif isinstance(block.shortcut, nn.Identity):
                    block.shortcut = GainedIdentity()
    return MixedPrecision(model, amp)


def pack_net(runs: list[Run]) -> MixedPrecision:
    """The template of these members: their own net when all have the same shortcut kind (all
    plain too), else the option-A net with a gain on each identity term (0 for the plain ones)."""
    r0 = runs[0]
    plain = {r.arch.shortcut == "none" for r in runs}
    if len(plain) == 1:
        return template_net(r0.arch, r0.data.num_classes, r0.amp, gained=False)
    return template_net(template(r0.arch), r0.data.num_classes, r0.amp, gained=True)


# -- the stacked state ----------------------------------------------------------------------------
def packed_loss(net: MixedPrecision, cfg: TrainConfig) -> Callable:
    """(params, buffers, x (B, K, ...), y (K, B)) -> ((K,) losses, (K, B, classes) logits): the
    template's forward and loss vmapped over the members, compiled when cfg.compile asks (once
    per pack: a Stack is rebuilt every epoch, the compiled function is not)."""
    def loss(params, buffers, x, y):
        out = functional_call(net, (params, buffers), (x,))
        return F.cross_entropy(out, y), out

    fn = vmap(loss, in_dims=(0, 0, 1, 0))
    return torch.compile(fn, mode=cfg.compile_mode) if cfg.compile else fn


class Stack:
    """K members' state as one: the parameters as (K, ...) views of one flat (K, N) tensor (the
    SGD update is then a handful of kernels whatever the depth), the buffers stacked (K, ...),
    the momentum buffers (K, N). Built from the members' Runs and written back into them."""

    def __init__(self, runs: list[Run], net: MixedPrecision, loss_fn: Callable | None = None) -> None:
        self.runs, self.net = runs, net
        self.loss_fn = loss_fn or packed_loss(net, dataclasses.replace(runs[0].cfg, compile=False))
        self.k = k = len(runs)
        device = runs[0].device
        own = [dict(r.net.named_parameters()) for r in runs]
        self.names = [n for n, _ in net.named_parameters()]
        for r, p in zip(runs, own):
            if list(p) != self.names or any(p[n].shape != q.shape for n, q in net.named_parameters()):
                raise ConfigError(f"{r.model_name}: its parameters differ from the pack's template")
        self.shapes = [own[0][n].shape for n in self.names]
        sizes = [s.numel() for s in self.shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.flat = torch.empty(k, self.offsets[-1], device=device)
        self.buf = torch.zeros_like(self.flat)  # momentum: 0 * 0 + d == d, torch's first step exactly
        with torch.no_grad():
            for j, r in enumerate(runs):
                self.flat[j] = torch.cat([own[j][n].detach().reshape(-1) for n in self.names])
                state = r.opt.state
                for i, n in enumerate(self.names):
                    b = state.get(own[j][n], {}).get("momentum_buffer")
                    if b is not None:
                        self.buf[j, self.offsets[i]:self.offsets[i + 1]] = b.reshape(-1)
        self.params = {n: self.flat[:, a:b].view(k, *s).requires_grad_()
                       for n, a, b, s in zip(self.names, self.offsets, self.offsets[1:], self.shapes)}
        member_buffers = [dict(r.net.named_buffers()) for r in runs]
        self.buffers = {}
        for n, _ in net.named_buffers():
            if n.endswith("shortcut.gain"):  # 1 for a residual member, 0 for a plain one
                self.buffers[n] = torch.tensor([float(r.arch.shortcut != "none") for r in runs], device=device)
            else:
                self.buffers[n] = torch.stack([b[n].detach() for b in member_buffers])

        def column(values):  # (K, 1): one value per member, broadcast over its parameters
            return torch.tensor(values, device=device, dtype=self.flat.dtype)[:, None]

        cfgs = [r.cfg for r in runs]
        self.wd, self.mom = column([c.weight_decay for c in cfgs]), column([c.momentum for c in cfgs])
        self.nesterov = torch.tensor([c.nesterov for c in cfgs], device=device)[:, None]
        self.any_nesterov = any(c.nesterov for c in cfgs)
        self.column, self.lrs, self.neg_lr = column, None, None

    def _eval_sums(self, params, buffers, x, y):
        out = functional_call(self.net, (params, buffers), (x,))
        return F.cross_entropy(out, y, reduction="sum"), (out.argmax(1) != y).sum()

    def step(self, x: torch.Tensor, y: torch.Tensor, lrs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every member on its batch: x (B, K, C, H, W), y (K, B). Returns the
        (K,) mean losses and wrong predictions, unsynced.

        x holds the members along dim 1, so folding them into a grouped convolution's channels
        is a view, not a copy."""
        loss, out = self.loss_fn(self.params, self.buffers, x, y)
        grads = torch.autograd.grad(loss.sum(), list(self.params.values()))
        with torch.no_grad():
            if lrs != self.lrs:  # a new (K, 1) column only when some lr changed
                self.lrs, self.neg_lr = list(lrs), self.column([-lr for lr in lrs])
            g = torch.cat([t.reshape(self.k, -1) for t in grads], 1)  # (K, N)
            # torch.optim.SGD: d = g + wd p; buf = momentum buf + d; d = d + momentum buf
            # (Nesterov) or buf; p = p - lr d
            d = torch.addcmul(g, self.wd, self.flat)
            self.buf.mul_(self.mom).add_(d)
            update = torch.where(self.nesterov, torch.addcmul(d, self.mom, self.buf), self.buf) \
                if self.any_nesterov else self.buf
            self.flat.addcmul_(self.neg_lr, update)
        return loss.detach(), (out.detach().argmax(-1) != y).sum(-1)

    @torch.no_grad()
    def evaluate(self, data: Dataset, split, cfg: TrainConfig) -> list[tuple[float, float]]:
        """Each member's (mean loss, error) of `split`, as `evaluation.evaluate` scores one
        model: eval mode, no augmentation, sums in float64. Every member reads the same batch."""
        self.net.eval()
        device = data.device
        loss = torch.zeros(self.k, device=device, dtype=torch.float64)
        wrong = torch.zeros(self.k, device=device, dtype=torch.float64)
        fmt = self.runs[0].fmt
        for x, y in data.eval_batches(split, eval_batch_size(cfg, device)):
            batch_loss, batch_wrong = vmap(self._eval_sums, in_dims=(0, 0, None, None))(
                self.params, self.buffers, x.contiguous(memory_format=fmt), y)
            loss += batch_loss
            wrong += batch_wrong
        n = len(split)
        return [(a / n, b / n) for a, b in zip(loss.tolist(), wrong.tolist())]

    @torch.no_grad()
    def write_back(self, j: int) -> None:
        """Member j's slice of the stack into its Run (model, BN statistics, momentum), so its
        checkpoint, probe and final weights are its own."""
        r = self.runs[j]
        own = dict(r.net.named_parameters())
        for i, n in enumerate(self.names):
            own[n].copy_(self.params[n][j])
            if r.cfg.momentum > 0:  # torch.optim.SGD keeps no buffer without momentum
                r.opt.state[own[n]]["momentum_buffer"] = \
                    self.buf[j, self.offsets[i]:self.offsets[i + 1]].view(self.shapes[i]).clone()
        for n, b in r.net.named_buffers():
            b.copy_(self.buffers[n][j])
        if self.lrs is not None:
            for group in r.opt.param_groups:
                group["lr"] = self.lrs[j]


def stacked(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' batches as the stack's input: x (B, K, C, H, W), y (K, B)."""
    return torch.stack([b[0] for b in batches], 1), torch.stack([b[1] for b in batches])


# -- the loop -------------------------------------------------------------------------------------
class Pack:
    """K Runs trained together: each epoch, the members at the lowest epoch are stacked, step
    together, are evaluated together, and are written back into their Runs, which log and
    checkpoint as they would alone."""

    def __init__(self, runs: list[Run], on_epoch: list) -> None:
        self.runs, self.on_epoch = runs, on_epoch
        r0 = runs[0]
        self.device, self.plan, self.cfg, self.data = r0.device, r0.plan, r0.cfg, r0.data
        self.net = pack_net(runs)
        self.loss_fn = packed_loss(self.net, self.cfg)
        self.pack_id = uuid.uuid4().hex[:8]

    def run(self, progress: bool) -> list[TrainResult | Exception]:
        runs, outcomes = self.runs, [None] * len(self.runs)
        for i, r in enumerate(runs):
            saved = load_checkpoint(r.path) if r.path is not None else None
            if saved is not None:
                r.restore(saved)
            r.log_start()
            if r.tracker is not None:
                r.tracker.set_tags({"pack": str(len(runs)), "pack_id": self.pack_id, "pack_index": str(i)})
            if r.status in ("finished", "diverged"):
                r.log_end()
                outcomes[i] = r.result()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.plan.iterations, initial=min(r.iteration for r in runs), unit="it",
                       disable=None, leave=False, dynamic_ncols=True)
        try:
            while live := [i for i, r in enumerate(runs) if outcomes[i] is None and r.status == "running"
                           and r.epoch < self.plan.epochs]:
                lowest = min(runs[i].epoch for i in live)
                group = [i for i in live if runs[i].epoch == lowest]
                for i, metrics in zip(group, self.train_epoch([runs[i] for i in group], bar)):
                    outcomes[i] = self.epoch_end(i, metrics)
        finally:
            if bar is not None:
                bar.close()
        for i, r in enumerate(runs):
            if outcomes[i] is not None:
                continue
            if r.status == "running":
                r.status = "finished"
                if r.cfg.probe:
                    r.responses = layer_responses(r.model, r.data, r.data.test)
            try:
                r.guard()
            except Exception as e:  # noqa: BLE001 - no longer this member's to write
                outcomes[i] = e
                continue
            r.log_end()
            r.checkpoint()
            outcomes[i] = r.result()
        return outcomes

    def epoch_end(self, i: int, metrics: dict | None) -> Exception | None:
        """Member i's epoch as `Run.run` ends one; the exception its on_epoch raised, if any."""
        r = self.runs[i]
        if metrics is None:
            r.status = "diverged"
            return None
        try:
            r.guard()  # before this epoch's results are written (a study: the trial is still ours)
        except Exception as e:  # noqa: BLE001 - this member alone stops, writing nothing more
            return e
        r.history.append(metrics)
        r.schedule.epoch_end(metrics)
        r.epoch += 1
        if r.tracker is not None:
            r.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=r.epoch)
        r.checkpoint()
        if self.on_epoch[i] is not None:
            try:
                self.on_epoch[i](r.epoch, metrics)
            except Exception as e:  # noqa: BLE001 - this member's own ending (pruned); the pack goes on
                return e
        return None

    def train_epoch(self, runs: list[Run], bar) -> list[dict | None]:
        """One epoch of `runs` (all at the same epoch) as one stack; each one's metrics, or None
        for one whose loss turned non-finite (frozen at that check, its state written back)."""
        k, device, cfg, data = len(runs), self.device, self.cfg, self.data
        epoch = runs[0].epoch + 1
        steps = self.plan.steps_in(epoch)
        self.net.train()
        stack = Stack(runs, self.net, self.loss_fn)
        batches = [r.batches(epoch) for r in runs]
        alive = [True] * k
        loss_sum = torch.zeros(k, device=device)
        wrong_sum = torch.zeros(k, device=device, dtype=torch.long)
        seen, last, lrs = 0, [None] * k, [r.schedule.lr(r.iteration) for r in runs]
        check_every = runs[0].check_every
        sync(device)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # vmap warns where an op has no batching rule and it loops over the members (tests
            # assert the packed step has none: tests/train/test_packed.py)
            warnings.filterwarnings("ignore", message="There is a performance drop")
            for s in range(steps):
                for j in range(k):  # a frozen member's slot is fed its last batch: its generator stops too
                    if alive[j]:
                        last[j] = next(batches[j])
                        lrs[j] = runs[j].schedule.lr(runs[j].iteration)
                x, y = stacked(last)
                loss, wrong = stack.step(x, y, lrs)
                n = y.shape[1]
                loss_sum += loss * n
                wrong_sum += wrong
                seen += n
                warming = [j for j in range(k) if alive[j] and runs[j].schedule.warming]
                if warming:  # a per-step sync, as alone; warm-up is short
                    w = wrong.tolist()
                    for j in warming:
                        runs[j].schedule.observe(runs[j].iteration, w[j] / n)
                for j in range(k):
                    runs[j].iteration += alive[j]
                if bar is not None:
                    bar.update(1)
                if (s + 1) % check_every == 0 or s + 1 == steps:
                    for j, ok in enumerate(torch.isfinite(loss_sum).tolist()):
                        if alive[j] and not ok:
                            alive[j] = False
                            stack.write_back(j)
                    if not any(alive):
                        break
            sync(device)
            seconds = time.perf_counter() - start
            for j in range(k):
                if alive[j]:
                    stack.write_back(j)
            evals = {}
            if len(data.val):
                evals["val"] = stack.evaluate(data, data.val, cfg)
            evals["test"] = stack.evaluate(data, data.test, cfg)
        out = []
        losses, wrongs = loss_sum.double().tolist(), wrong_sum.double().tolist()
        for j, r in enumerate(runs):
            if not alive[j]:
                out.append(None)
                continue
            m = {"epoch": epoch, "train_loss": losses[j] / seen, "train_error": wrongs[j] / seen}
            for split, scores in evals.items():
                m[f"{split}_loss"], m[f"{split}_error"] = scores[j]
            if not all(math.isfinite(v) for v in m.values()):
                out.append(None)
                continue
            m.update(lr=lrs[j], epoch_seconds=seconds, images_per_second=seen / seconds, iteration=r.iteration)
            out.append(m)
        return out
