"""The training loop: build the model, train, evaluate, checkpoint, and write the run's outputs.

``Trainer(args)`` takes the parsed command line of ``main_density.py`` (an ``argparse.Namespace``
with ``explicit``, the set of flags given explicitly). ``setup()`` validates everything (arguments,
data, output folder, resume checkpoint) before anything is written; ``train()`` returns the exit
status (0, or 3 when training diverges). The data source is a task (:mod:`train.tasks`), the
folder rules are in :mod:`train.rundir`, the presets in :mod:`train.config`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import utils
from flows.checkpoint import with_digest
from utils import UserError

from .config import RESUMABLE, RUN_FILES, check_model, fill_objective, fill_settings, resolve_compile
from .distributed import dist_env, gather_cat
from .guard import MIN_STEP as MIN_GUARD_STEP  # noqa: F401  (re-exported)
from .guard import POINTS as GUARD_POINTS
from .guard import SEED as GUARD_SEED
from .guard import SolverGuard
from .resources import check_memory, eval_chunk, is_out_of_memory
from .rundir import check_limits, check_writable, choose_out, clean_temp_files, json_safe
from .tasks import build_task, is_earth


def build_model(args):
    from flows import BASELINES, MCNF

    if args.model != "mcnf":
        try:
            extra = dict(components=args.components) if args.model == "ncp" else {}
            return BASELINES[args.model](args.M, dim=args.dim, hidden=args.flow_hidden_size, n_hidden=args.n_hidden,
                                         activation=args.activation, blocks=args.blocks, **extra)  # fmt: skip
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        return MCNF(
            args.M, dim=args.dim, hidden=args.flow_hidden_size, n_hidden=args.n_hidden, charts=args.charts,
            activation=args.activation, max_speed=args.max_speed, fourier=args.fourier,
            fourier_scale=args.fourier_scale, kinetic=args.kinetic, jacobian=args.jacobian,
            chart_center=args.chart_center, conc=args.conc, divergence=args.divergence,
            train_solver=dict(method=args.solver, atol=args.atol, rtol=args.rtol, step_size=args.step_size,
                              adjoint=args.adjoint),
            eval_solver=dict(method="dopri5", atol=args.eval_tol, rtol=args.eval_tol),
        )  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None


def load_checkpoint(path):
    """The training checkpoint at ``path``, loaded safely (tensors and plain data only)."""
    from flows import CheckpointError, read_checkpoint

    needed = ("model", "model_config", "optimizer", "scheduler", "epoch", "args", "rng", "train_rng")
    try:
        ckpt = read_checkpoint(path, required=needed, what="--resume: checkpoint")
    except CheckpointError as e:
        raise UserError(
            str(e).replace("not an MCNF checkpoint", "not a checkpoint written by main_density.py")
        ) from None
    def records(key, kind=dict):
        v = ckpt.get(key, [])
        return isinstance(v, list) and all(isinstance(x, kind) for x in v)

    bad = [
        k for k, ok in [
            ("args", isinstance(ckpt["args"], dict)),
            ("epoch", isinstance(ckpt["epoch"], int) and not isinstance(ckpt["epoch"], bool) and ckpt["epoch"] >= 0),
            ("history", records("history") and all(isinstance(h.get("epoch"), int) for h in ckpt.get("history", []))),
            ("losses", records("losses", (list, tuple))),
            ("guard_log", records("guard_log")),
            ("train_seconds", isinstance(ckpt.get("train_seconds", 0.0), (int, float))),
            ("best", ckpt.get("best") is None or (isinstance(ckpt["best"], dict)
                                                  and {"model", "epoch", "val_nll"} <= set(ckpt["best"]))),
        ] if not ok
    ]  # fmt: skip
    if bad:
        raise UserError(
            f"--resume: {str(path)!r} is not a checkpoint written by main_density.py (bad {', '.join(bad)})"
        )
    return ckpt


def make_scheduler(opt, epochs, num_drops, kind="drops", warmup=0):
    """``drops``: x0.1 at ``num_drops`` evenly spaced milestones (the reference); ``cosine``: linear
    warm-up over ``warmup`` epochs, then cosine decay to 0 at ``epochs``."""
    if kind == "cosine":

        def factor(step):  # a plain function: the schedule follows --epochs of a resumed run
            if step < warmup:
                return (step + 1) / warmup
            frac = (step - warmup) / max(epochs - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    milestones = [round(epochs * (i + 1) / (num_drops + 1)) for i in range(num_drops)]
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


def make_optimizer(args, params):
    kind = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=args.lr, weight_decay=args.weight_decay)


class MeanNLL(torch.nn.Module):
    """``-mean log p(x)`` (plus the mean of ``--kinetic``/``--jacobian``'s regularization when set): the
    training loss, as a module so that DistributedDataParallel wraps it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        loss = -self.model.log_prob(x).mean()
        reg, self.model.regularization = self.model.regularization, None  # (it holds the graph)
        return loss if reg is None else loss + reg.mean()


class FlowMatching(torch.nn.Module):
    """The flow-matching loss :func:`flows.matching.flow_matching_loss` of a batch ``(x, z, t)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, z, t):
        from flows.matching import flow_matching_loss

        return flow_matching_loss(self.model, x, z, t)


class EMA:
    """Bias-corrected exponential moving average of a model's parameters.

    After ``t`` steps the EMA is ``sum_k (1 - d) d^(t-k) p_k / (1 - d^t)``: the plain average started
    at zero, divided by the weight it has gathered (Adam's bias correction; Kingma & Ba 2015). So the
    initial weights, which the uncorrected average keeps at weight ``d^t`` (61% after 500 steps at
    ``d = 0.999``), get none, and a short run is scored on weights it has trained. As an update:
    ``e <- b e + (1 - b) p`` with ``b = d (1 - d^(t-1)) / (1 - d^t)`` (``b = 0`` at the first step,
    ``b -> d`` as ``t`` grows). ``steps`` is saved in checkpoints; an older checkpoint without it
    resumes the uncorrected average (``b = d``).
    """

    def __init__(self, model, decay, steps: int = 0):
        self.decay, self.steps = decay, int(steps)
        self.model = copy.deepcopy(model).requires_grad_(False)

    def beta(self) -> float:
        """The weight of the old average in the update of step ``steps`` (after the increment)."""
        d, t = self.decay, self.steps
        return d * (1 - d ** (t - 1)) / (1 - d**t)

    @torch.no_grad()
    def update(self, model):
        self.steps += 1
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - self.beta())


class Trainer:
    def __init__(self, args, check_value=None):
        """``check_value(name, value)``: the command line's own validation of one flag's value (raises
        UserError), applied to the values a resumed checkpoint brings back."""
        self.args = args
        self.check_value = check_value
        self.rank, self.world, self.local_rank = dist_env()
        self.is_main = self.rank == 0

    def setup(self):
        args = self.args
        ckpt = None
        if args.resume:
            ckpt = load_checkpoint(args.resume)
            saved = ckpt["args"]
            conflicts = [
                k for k in sorted(args.explicit - RESUMABLE) if k in saved and getattr(args, k) != saved[k]
            ]
            if conflicts:
                given = ", ".join(f"--{k} {getattr(args, k)} (checkpoint: {saved[k]})" for k in conflicts)
                raise UserError(f"--resume: {given} conflict with the checkpoint; a resumed run keeps its model, "
                                f"data and optimizer (flags that may change: {', '.join(sorted(RESUMABLE))})")  # fmt: skip
            for k, v in saved.items():
                if k not in RESUMABLE and k != "explicit" and hasattr(args, k):
                    setattr(args, k, v)
            # kept from the run unless given again (the outputs too, so a resumed run draws what it promised)
            for k in ("epochs", "eval_freq", "test_size", "guard_freq", "data_dir", "save", "samples", "res"):
                if k not in args.explicit:
                    setattr(args, k, saved.get(k, getattr(args, k)))
            if self.check_value is not None:  # a checkpoint's values pass the same checks as flags
                for k in sorted(saved):
                    if k != "explicit" and hasattr(args, k):
                        self.check_value(k, getattr(args, k), f"--resume: the checkpoint's --{k}")
            if "out" not in args.explicit:
                args.out = None  # the checkpoint's own folder (choose_out)
        check_model(args)
        fill_objective(args, is_earth(args.dataset), resuming=ckpt is not None)
        check_limits(args)
        fill_settings(args)
        self.device = utils.resolve_device(args.dev)
        if args.batch_size < self.world:
            raise UserError(f"--batch_size {args.batch_size} is smaller than the {self.world} ranks: "
                            "every rank needs at least one point of each batch")  # fmt: skip
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.dtype = utils.DTYPES[args.dtype]
        check_memory(args, self.device, self.world)
        self.eval_chunk = eval_chunk(args, self.device)
        self.task = build_task(args)
        # every rank validates the output folder; nothing is written before all checks pass
        self.out = choose_out(args, Path(args.resume) if args.resume else None)
        check_writable(self.out)
        args.out = str(self.out)

        utils.seed_everything(args.seed)
        self.model = build_model(args).to(device=self.device, dtype=self.dtype)
        compiled = resolve_compile(args, args.epochs - int(ckpt["epoch"] if ckpt else 0), self.device)
        if (
            compiled
        ):  # only ever for the MCNF (a baseline has no ODE function; check_model refuses --compile on)
            self.model.compile_ode(True)
        #: the MCNF's ODE function (for its evaluation counts); None for the discrete baselines
        self.dynamics = getattr(self.model, "dynamics", None)
        self.loss_fn = FlowMatching(self.model) if args.objective == "fm" else MeanNLL(self.model)
        if self.world > 1:  # every rank starts from rank 0's weights; DDP averages the gradients
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_fn = DistributedDataParallel(self.loss_fn, device_ids=ids)
        self.opt = make_optimizer(args, self.model.parameters())
        self.sched = make_scheduler(self.opt, args.epochs, args.num_drops, args.lr_schedule, args.warmup)
        self.ema = EMA(self.model, args.ema) if args.ema else None
        self.guard = None
        if getattr(args, "solver_guard", 0):  # the fixed training points the solver guard scores
            x = self.task.random_batch(GUARD_POINTS, torch.Generator().manual_seed(GUARD_SEED), torch.float64)
            self.guard = SolverGuard(x, args.solver_guard, self.dtype, self.device, self.eval_chunk)
        self.train_gen = torch.Generator().manual_seed(args.seed)
        self.start_epoch, self.history, self.losses, self.train_seconds = 0, [], [], 0.0
        #: the best validation checkpoint so far (tasks with a validation split): weights, epoch, val_nll.
        #: Kept in memory and in checkpoint.pt, so the run's report never depends on a best.pt on disk.
        self.best = None
        self.nfe = {"forward": 0, "backward": 0, "steps": 0}
        if ckpt is not None:
            self.restore(ckpt)
            if self.start_epoch > args.epochs:
                raise UserError(f"--resume: the checkpoint has already trained {self.start_epoch} epochs; "
                                f"pass --epochs {self.start_epoch} or more")  # fmt: skip
        if self.world > 1:  # every rank has validated; only then does rank 0 write
            import torch.distributed as dist

            dist.barrier()
        if self.is_main:
            self.prepare_out(resuming=ckpt is not None)

    def restore(self, ckpt):
        """Load a resumed checkpoint's state (weights, optimizer, schedules, RNGs, records)."""
        args = self.args
        try:
            self.model.load_state_dict(ckpt.get("raw_model", ckpt["model"]))
            if self.ema is not None:
                self.ema.model.load_state_dict(ckpt["model"])
                self.ema.steps = int(ckpt.get("ema_steps", 10**9))  # older checkpoints: no correction
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.train_gen.set_state(ckpt["train_rng"])
            utils.set_rng_state(ckpt["rng"])
            self.start_epoch = int(ckpt["epoch"])
            self.history = list(ckpt.get("history", []))
            self.losses = [tuple(x) for x in ckpt.get("losses", [])]
            self.train_seconds = float(ckpt.get("train_seconds", 0.0))
            if self.guard is not None:
                self.guard.log = list(ckpt.get("guard_log", []))
                self.guard.seconds = float(ckpt.get("guard_seconds", 0.0))
            self.best = ckpt.get("best")
            if self.best is None and self.task.x_select is not None and self.history:
                # written before checkpoints carried their best model: the best.pt beside the checkpoint
                # (its own folder), accepted only when its record matches this run's history
                from flows import CheckpointError, read_checkpoint

                try:
                    b = read_checkpoint(Path(args.resume).parent / "best.pt", required=("model", "epoch", "val_nll"))
                except CheckpointError:
                    b = None
                rec = {h["epoch"]: h.get("val_nll") for h in self.history}
                if b is not None and rec.get(b["epoch"]) == b["val_nll"]:
                    self.best = {k: b[k] for k in ("model", "epoch", "val_nll")}
            if self.best is not None:
                self.scored_model_copy().load_state_dict(self.best["model"])  # it must fit the model
        except Exception as e:  # doctored or mismatched contents
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"--resume: {args.resume!r} does not fit the model it describes ({first})") from None

    def scored_model_copy(self):
        return copy.deepcopy(self.scored_model)

    def prepare_out(self, resuming: bool):
        """Create the output folder; make history.jsonl agree with the checkpoint being resumed.

        A new run into a folder of another run (``--overwrite``) first removes that run's files
        (checkpoint, best model, metrics, history); no other file is touched.
        """
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"output folder {str(self.out)!r} cannot be created: {e.strerror or e}") from None
        clean_temp_files(self.out)
        own = resuming and self.out.resolve() == Path(self.args.resume).resolve().parent
        if not own:  # a new run, or a resume into another folder: the files of the run there go
            for name in (*RUN_FILES, "best.pt"):
                (self.out / name).unlink(missing_ok=True)
        else:
            (self.out / "metrics.json").unlink(missing_ok=True)  # it will be this run's again at the end
        if resuming:  # a kill between a history append and the checkpoint rename left extra lines
            utils.atomic_write_text(
                "".join(json.dumps(h) + "\n" for h in self.history), self.out / "history.jsonl"
            )
            if self.best is not None and not own:
                self.write_best()

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def scored_model(self):
        """The weights that are evaluated, drawn and saved as "model": the EMA when there is one."""
        return self.model if self.ema is None else self.ema.model

    def checkpoint(self, epoch):
        if not self.is_main:
            return
        args = {k: v for k, v in vars(self.args).items() if k != "explicit"}
        extra = {"raw_model": self.model.state_dict(), "ema_steps": self.ema.steps} if self.ema is not None else {}
        if self.best is not None:
            extra["best"] = self.best
        utils.atomic_torch_save(
            with_digest({
                "model": self.scored_model.state_dict(), "model_config": self.model.config, **extra,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "epoch": epoch, "args": args, "rng": utils.rng_state(), "train_rng": self.train_gen.get_state(),
                "history": self.history, "losses": self.losses, "train_seconds": self.train_seconds,
                "guard_log": self.guard_log, "guard_seconds": self.guard_seconds,
            }),
            self.out / "checkpoint.pt",
        )  # fmt: skip

    def sharded_metrics(self, x, with_truth: bool):
        """Evaluation metrics on ``x``, each rank evaluating its shard (then gathered in rank order)."""
        from flows import metrics_from_log_probs, model_log_prob

        shard = x.tensor_split(self.world)[self.rank]
        lp = gather_cat(model_log_prob(self.eval_model(), shard.to(self.device), self.eval_chunk), self.world)
        truth = self.task.truth(x) if with_truth else None
        return metrics_from_log_probs(lp, truth)

    def evaluate(self, epoch, loss):
        t0 = time.perf_counter()
        if self.task.x_select is not None:  # model selection on the validation split; the test split waits
            v = self.sharded_metrics(self.task.x_select, with_truth=False)
            m = {"val_nll": v["test_nll"], "val_nll_stderr": v["test_nll_stderr"]}
            if self.best is None or m["val_nll"] < self.best["val_nll"]:
                m["best"] = True
                state = {k: v.detach().clone() for k, v in self.scored_model.state_dict().items()}
                self.best = {"model": state, "epoch": epoch, "val_nll": m["val_nll"]}
                if self.is_main:
                    self.write_best()
        else:
            m = self.sharded_metrics(self.task.x_test, with_truth=self.task.truth is not None)
        if self.guard_log and self.guard_log[-1]["epoch"] == epoch:  # the check made at this epoch
            m["guard"] = {k: v for k, v in self.guard_log[-1].items() if k != "epoch"}
        m.update(epoch=epoch, train_loss=loss, lr=self.opt.param_groups[0]["lr"],
                 train_seconds=self.train_seconds, eval_seconds=time.perf_counter() - t0)  # fmt: skip
        self.history.append(m)
        if self.is_main:
            with open(self.out / "history.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
        return m

    def write_best(self):
        """best.pt: the best validation weights, for readers of the folder (the run itself reports from
        :attr:`best`, carried in checkpoint.pt)."""
        utils.atomic_torch_save(with_digest({**self.best, "model_config": self.model.config}), self.out / "best.pt")

    @property
    def guard_log(self) -> list:
        return self.guard.log if self.guard is not None else []

    @property
    def guard_seconds(self) -> float:
        return self.guard.seconds if self.guard is not None else 0.0

    def solver_guard(self, epoch):
        """The solver guard's check (:mod:`train.guard`) of the raw model's training solver; every rank
        computes the same numbers (same weights, same points), so the ranks stay in step."""
        args = self.args
        record, args.step_size = self.guard.check(self.model, epoch, args.step_size)
        if "refined_to" in record and self.is_main:
            print(f"epoch {epoch}: solver guard: training NLL differed from the accurate solve by "
                  f"{record['gap']:+.4f} nats (90% of points within {record['gap_q']:.4f}); --step_size "
                  f"{record['step_size']:g} -> {args.step_size:g} (gap now {record['gap_after']:+.4f})",
                  flush=True)  # fmt: skip
        if "warning" in record and self.is_main:
            print(f"warning: epoch {epoch}: {record['warning']}", file=sys.stderr, flush=True)
        return record

    def train(self):
        from tqdm import tqdm

        args, model = self.args, self.model
        stop = (
            args.epochs if args.stop_after is None else min(args.epochs, self.start_epoch + args.stop_after)
        )
        bar = tqdm(range(self.start_epoch, stop), initial=self.start_epoch, total=args.epochs,
                   disable=args.quiet or not self.is_main, dynamic_ncols=True,
                   desc=f"{args.dataset} on {args.M}")  # fmt: skip
        loss_val = float("nan")
        for epoch in bar:
            model.train()
            t0 = time.perf_counter()
            losses, nfe_f = [], 0
            for batch in self.epoch_batches():
                # every rank draws the same global batch and keeps its shard: with equal shards the
                # averaged gradients equal those of the whole batch in one process
                batch = [b.tensor_split(self.world)[self.rank].to(self.device) for b in batch]
                batch[0] = batch[0].to(self.dtype)
                try:
                    loss = self.loss_fn(*batch)  # mle: a true mean NLL in nats per sample
                    nfe_f = self.dynamics.nfe if self.dynamics is not None else 0
                    self.opt.zero_grad(set_to_none=True)
                    if not self.all_finite(loss):
                        raise FloatingPointError("loss is not finite")
                    loss.backward()
                except (FloatingPointError, RuntimeError, MemoryError) as e:
                    return self.fail(epoch, e)
                self.nfe["forward"] += nfe_f
                self.nfe["backward"] += (self.dynamics.nfe if self.dynamics is not None else 0) - nfe_f
                self.nfe["steps"] += 1
                if args.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(model)
                losses.append(self.mean_over_ranks(loss.detach()))
            self.sched.step()
            self.train_seconds += time.perf_counter() - t0
            loss_val = sum(losses) / len(losses)
            self.losses.append((epoch + 1, loss_val))
            bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{self.opt.param_groups[0]['lr']:.1e}", nfe=nfe_f)
            done = epoch + 1
            if args.contsave and done % args.save_freq == 0 and self.is_main:
                self.save_frame(done)
            is_eval = done % args.eval_freq == 0 or done == args.epochs
            if self.guard is not None and (done % args.guard_freq == 0 or is_eval):
                try:
                    self.solver_guard(done)
                except (FloatingPointError, RuntimeError, MemoryError) as e:
                    return self.fail(epoch, e, "solver guard failed: ")
            if is_eval:
                try:
                    m = self.evaluate(done, loss_val)
                except (FloatingPointError, RuntimeError, MemoryError) as e:  # SolverError is a RuntimeError
                    return self.fail(epoch, e, "evaluation failed: ")
                name = "train FM loss" if args.objective == "fm" else "train NLL"
                msg = self.task.eval_line(done, loss_val, m, name)
                if self.is_main:
                    (bar.write if not args.quiet else print)(msg)
                self.checkpoint(done)
        if stop < args.epochs:
            self.checkpoint(stop)
            if self.is_main:
                print(f"stopped after epoch {stop} of {args.epochs}; "
                      f"continue with --resume {self.out / 'checkpoint.pt'}")  # fmt: skip
            return 0
        self.finish()
        return 0

    def all_finite(self, loss) -> bool:
        ok = torch.isfinite(loss).to(torch.float32).reshape(1)
        if self.world > 1:  # all ranks must agree, or one would wait forever in the next all-reduce
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def mean_over_ranks(self, value) -> float:
        if self.world > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value = value / self.world
        return value.item()

    def ranks_in_sync(self) -> bool:
        """True when every rank holds bit-identical parameters (DDP's promise, checked)."""
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in self.scored_model.parameters()])
        return all(torch.equal(flat, other) for other in gather_cat(flat[None], self.world))

    def epoch_batches(self):
        """One epoch: a fresh batch of the true density (reference), or a pass over the training split
        (Earth data, mle), or one batch drawn with replacement from it (Earth data, fm). Each batch is a
        tuple of loss arguments: ``(x,)`` for mle, ``(x, z, t)`` for fm (base points and times)."""
        args, gen = self.args, self.train_gen
        if args.objective != "fm":
            return [(x,) for x in self.task.train_batches(args.batch_size, gen, self.dtype)]
        x = self.task.random_batch(args.batch_size, gen, self.dtype)
        z = self.model.sample_base(len(x), gen, torch.float64, torch.device("cpu"))
        t = torch.rand(len(x), generator=gen, dtype=torch.float64)
        return [(x, z, t)]

    def fail(self, epoch, err, what=""):
        """Report a failed step: out of memory as such (exit 2), anything else as divergence (exit 3)."""
        if is_out_of_memory(err):
            if self.is_main:
                print(f"main_density.py: error: out of memory at epoch {epoch + 1} ({what.rstrip(': ') or 'training'}); "
                      "use smaller sizes (--batch_size, --flow_hidden_size, --dim, --test_size); the last "
                      f"checkpoint (if any) is kept in {self.out / 'checkpoint.pt'}", file=sys.stderr)  # fmt: skip
            return 2
        if not self.is_main:
            return 3
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: training diverged at epoch {epoch + 1}: {what}{first}. The last good checkpoint "
              f"(if any) is kept in {self.out / 'checkpoint.pt'}; try a lower --lr.", file=sys.stderr)  # fmt: skip
        return 3

    def eval_model(self):
        """A float64 copy of the model in eval mode (its eval solver is dopri5 at ``--eval_tol``).

        Float32 round-off in the ambient coordinates of far points (hyperboloid ``x_0 ~ cosh r``)
        is larger than tight tolerances, which then make adaptive solvers crawl; float64 avoids it.
        """
        return copy.deepcopy(self.scored_model).to(torch.float64).eval()

    def figure_log_prob(self):
        from flows import figure_model

        accurate = self.args.objective == "fm"  # no training solver whose step the figure can reuse
        m = figure_model(self.scored_model, accurate=accurate)
        dtype = torch.float64 if accurate else torch.float32
        return lambda x: m.log_prob(x.to(self.device, dtype))

    @torch.no_grad()
    def model_samples(self, n):
        return self.eval_model().sample(n).cpu()

    def save_frame(self, epoch):
        from viz.figures import density_figure

        folder = self.out / "contsave"
        folder.mkdir(exist_ok=True)
        density_figure({f"epoch {epoch}": self.figure_log_prob()}, self.args.M, folder / f"{epoch:06d}.png",
                       res=min(self.args.res, 200))  # fmt: skip

    def finish(self):
        args = self.args
        last = self.history[-1]
        in_sync = self.ranks_in_sync() if self.world > 1 else True
        if self.task.x_select is not None:  # report the test split with the best validation checkpoint
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()  # rank 0 has written best.pt
            best = self.best  # this run's own best (in memory and in checkpoint.pt), never a file's
            if best is None:
                raise UserError("this run has no validation record to select a model by")
            self.scored_model.load_state_dict(best["model"])
            t = self.sharded_metrics(self.task.x_test, with_truth=False)
            last = {**t, "val_nll": best["val_nll"], "best_epoch": best["epoch"]}
        if not self.is_main:
            return
        keys = (
            "test_nll",
            "test_nll_stderr",
            "n_test",
            "entropy",
            "kl",
            "kl_stderr",
            "val_nll",
            "best_epoch",
        )
        steps = max(self.nfe["steps"], 1)
        metrics = {
            **{k: last[k] for k in keys if k in last},
            "epochs": args.epochs, "train_seconds": self.train_seconds,
            "seconds_per_epoch": self.train_seconds / max(args.epochs - self.start_epoch, 1),
            "nfe_forward": self.nfe["forward"] / steps,
            "nfe_backward": self.nfe["backward"] / steps,
            "device": str(self.device), "ranks": self.world, "ranks_in_sync": in_sync,
            "compiled": bool(self.dynamics is not None and self.dynamics.compiled),
            "model": args.model, "parameters": sum(p.numel() for p in self.model.parameters()),
            "args": {k: v for k, v in vars(args).items() if k != "explicit"},
        }  # fmt: skip
        if self.guard_log:  # the solver guard's refinements, its checks, and the step the run ended with
            metrics["guard_events"] = [c for c in self.guard_log if "refined_to" in c]
            open_gaps = [f"epoch {c['epoch']}: {c['warning']}" for c in self.guard_log if "warning" in c]
            if open_gaps:
                metrics["warnings"] = open_gaps
            metrics["guard_checks"] = len(self.guard_log)
            metrics["guard_seconds"] = self.guard_seconds
            metrics["final_step_size"] = args.step_size
        from viz import figures

        losses = np.array(self.losses).reshape(-1, 2).T
        label = "flow-matching loss (batch)" if args.objective == "fm" else "training NLL (batch)"
        figures.training_curve(self.history, self.out / "training_curve.png", losses=losses, loss_label=label)
        if args.save:
            t0 = time.perf_counter()
            self.task.figure(self.figure_log_prob(), self.out / f"{args.dataset}_{args.M}.png", args.res,
                             progress=not args.quiet, model_sample=self.model_samples)  # fmt: skip
            metrics["figure_seconds"] = time.perf_counter() - t0
        if args.contsave:
            # only the frames this run wrote (a user's files in contsave/ are neither shown nor touched)
            names = [
                self.out / "contsave" / f"{e:06d}.png"
                for e in range(args.save_freq, args.epochs + 1, args.save_freq)
            ]
            frames = [f for f in names if f.is_file()]
            metrics["gif_frames"] = figures.make_gif(frames, self.out / "training.gif")
        if args.samples:
            x = self.model_samples(args.samples)
            np.save(self.out / "samples.npy", x.numpy())
            draw = figures.samples_figure if args.dim == 2 else figures.marginals_figure
            draw(self.task.sample_panels(x, args.samples), args.M, self.out / "samples.png")
        utils.atomic_write_json(json_safe(metrics), self.out / "metrics.json")
        print(self.task.done_line(metrics, self.train_seconds, self.out))
