"""The training loop: build the model, train, evaluate, checkpoint, and write the run's outputs.

``Trainer(args)`` takes the parsed command line of ``main_density.py`` (an ``argparse.Namespace``
with ``explicit``, the set of flags given explicitly). ``setup()`` validates everything (arguments,
data, output folder, resume checkpoint) before anything is written; ``train()`` returns the exit
status (0, or 3 when training diverges). The pieces, one module each: what is trained
(:mod:`train.build`), checkpoints (:mod:`train.checkpoints`), the solver guard (:mod:`train.guard`),
the outputs of a finished run (:mod:`train.outputs`), the data source (:mod:`train.tasks`), the
folder rules (:mod:`train.rundir`), the presets (:mod:`train.config`), the memory estimate
(:mod:`train.resources`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import utils
from flows import interrupts
from utils import UserError

from .build import EMA, FlowMatching, MeanNLL, build_model, make_optimizer, make_scheduler  # noqa: F401
from .checkpoints import Checkpointing, load_checkpoint
from .compile_cache import compile_key, is_warm, mark_warm
from .config import RESUMABLE, check_model, fill_objective, fill_settings, resolve_compile
from .distributed import dist_env, gather_cat
from .evaluation import Evaluation
from .guard import MIN_STEP as MIN_GUARD_STEP  # noqa: F401  (re-exported)
from .guard import POINTS as GUARD_POINTS
from .guard import SEED as GUARD_SEED
from .guard import SolverGuard
from .objectives import get_objective
from .outputs import Outputs
from .resources import check_memory, eval_chunk, is_out_of_memory
from .rundir import check_limits, check_writable, choose_out
from .settings import resolve as resolve_settings
from .tasks import build_task, is_earth


def complete_args(args, resuming: bool = False):
    """Parsed flags -> the run's full settings: the model checks, the objective's presets (explicit flags
    win; on resume the checkpoint's values stand), the size limits and the solver settings. The trainer
    and :func:`scripts.runs.resolved_settings` (what a command would train with) both go through here."""
    check_model(args)
    fill_objective(args, is_earth(args.dataset), resuming=resuming)
    check_limits(args)
    fill_settings(args)


class Trainer(Checkpointing, Evaluation, Outputs):
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
        complete_args(args, resuming=ckpt is not None)
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
        if self.device.type == "cpu":
            # Subnormal floats (below 1.2e-38 in float32) cost the CPU a microcode assist per operation. Late
            # in long flow-matching runs some of Adam's moments decay into that range (volcano at 180,000
            # steps: 2,934 of its 661,008 optimizer entries), and the step time doubled (20.7 against 11.6 ms
            # over 2,000 steps resumed from that checkpoint). Flushing them to zero changes no result that a
            # float can tell apart from zero, so the trainer does it on the CPU, for its whole run.
            torch.set_flush_denormal(True)
        check_memory(args, self.device, self.world)
        self.eval_chunk = eval_chunk(args, self.device)
        self.task = build_task(resolve_settings(args))
        # every rank validates the output folder; nothing is written before all checks pass
        self.out = choose_out(args, Path(args.resume) if args.resume else None)
        check_writable(self.out)
        args.out = str(self.out)

        kde = None
        if getattr(args, "base", "default") == "kde" and (ckpt is None or args.base_n is None):
            # the ladder chosen on validation unless --kde_kappas gave one; saved with the run's flags
            centers, args.base_kappas, kde_val = self.task.kde_base(args.base_kappas)
            args.base_n, kde = len(centers), centers
            if self.is_main and not args.quiet:
                print(f"KDE base: concentrations {', '.join(f'{k:.4g}' for k in args.base_kappas)}; "
                      f"validation NLL of the base alone {kde_val:.4f}")  # fmt: skip
        #: the run's frozen settings, read once from the resolved flags (train/settings.py); from here on
        #: the trainer reads them, not the namespace (which is kept only to be saved as the run's flags)
        self.settings = s = resolve_settings(args)
        utils.seed_everything(s.run.seed)
        self.model = build_model(s.model, s.solver).to(device=self.device, dtype=self.dtype)
        if kde is not None:
            self.model.set_kde_base(kde)
        # only ever for the MCNF (a baseline has no ODE function; check_model refuses --compile on)
        #: the key of this run's compiled graph in inductor's cache (train/compile_cache.py); None: eager
        self.compile_key = None
        if getattr(self.model, "dynamics", None) is not None:
            key = compile_key(self.model.config, self.dtype, self.device, s.optim.batch_size,
                              bool(s.model.kinetic or s.model.jacobian))  # fmt: skip
            remaining = s.optim.epochs - int(ckpt["epoch"] if ckpt else 0)
            fused = self.model.dynamics.runs_fused()
            native = self.model.dynamics.runs_native(self.device, self.dtype)
            if resolve_compile(args, remaining, self.device, warm=is_warm(key), fused=fused, native=native):
                self.model.compile_ode(True)
                self.compile_key = key
        #: the MCNF's ODE function (for its evaluation counts); None for the discrete baselines
        self.dynamics = getattr(self.model, "dynamics", None)
        self.objective = get_objective(s.optim.objective)
        self.loss_fn = self.objective.loss(self.model)
        if self.world > 1:  # every rank starts from rank 0's weights; DDP averages the gradients
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_fn = DistributedDataParallel(self.loss_fn, device_ids=ids)
        self.opt = make_optimizer(s.optim, self.model.parameters())
        self.sched = make_scheduler(self.opt, s.optim)
        self.ema = EMA(self.model, s.optim.ema) if s.optim.ema else None
        self.guard = None
        if s.solver.guard_tol:  # the fixed training points the solver guard scores
            x = self.task.random_batch(GUARD_POINTS, torch.Generator().manual_seed(GUARD_SEED), torch.float64)
            self.guard = SolverGuard(x, s.solver.guard_tol, self.dtype, self.device, self.eval_chunk)
        self.train_gen = torch.Generator().manual_seed(s.run.seed)
        self.start_epoch, self.history, self.losses, self.train_seconds = 0, [], [], 0.0
        #: the best validation checkpoint so far (tasks with a validation split): weights, epoch, val_nll.
        #: Kept in memory and in checkpoint.pt, so the run's report never depends on a best.pt on disk.
        self.best = None
        self.nfe = {"forward": 0, "backward": 0, "steps": 0}
        if ckpt is not None:
            self.restore(ckpt)
            if self.start_epoch > s.optim.epochs:
                raise UserError(f"--resume: the checkpoint has already trained {self.start_epoch} epochs; "
                                f"pass --epochs {self.start_epoch} or more")  # fmt: skip
        if self.world > 1:  # every rank has validated; only then does rank 0 write
            import torch.distributed as dist

            dist.barrier()
        if self.is_main:
            self.prepare_out(resuming=ckpt is not None)

    @property
    def guard_log(self) -> list:
        return self.guard.log if self.guard is not None else []

    @property
    def guard_seconds(self) -> float:
        return self.guard.seconds if self.guard is not None else 0.0

    def solver_guard(self, epoch):
        """The solver guard's check (:mod:`train.guard`) of the raw model's training solver; every rank
        computes the same numbers (same weights, same points), so the ranks stay in step."""
        record, step = self.guard.check(self.model, epoch, self.model.train_solver.step_size)
        if "refined_to" in record and self.is_main:
            print(f"epoch {epoch}: solver guard: training NLL differed from the accurate solve by "
                  f"{record['gap']:+.4f} nats (90% of points within {record['gap_q']:.4f}); --step_size "
                  f"{record['step_size']:g} -> {step:g} (gap now {record['gap_after']:+.4f})",
                  flush=True)  # fmt: skip
        if "warning" in record and self.is_main:
            print(f"warning: epoch {epoch}: {record['warning']}", file=sys.stderr, flush=True)
        return record

    def train(self):
        from tqdm import tqdm

        model, run, optim, epochs = (
            self.model,
            self.settings.run,
            self.settings.optim,
            self.settings.optim.epochs,
        )
        stop = epochs if run.stop_after is None else min(epochs, self.start_epoch + run.stop_after)
        bar = tqdm(range(self.start_epoch, stop), initial=self.start_epoch, total=epochs,
                   disable=run.quiet or not self.is_main, dynamic_ncols=True,
                   desc=f"{run.dataset} on {self.settings.model.manifold}")  # fmt: skip
        loss_val = float("nan")
        if self.start_epoch == 0 and self.settings.model.base == "kde" and self.task.x_select is not None:
            # the untrained model is its KDE base (the flow starts at the identity): a candidate like any other
            try:
                m = self.evaluate(0, loss_val)
            except (FloatingPointError, RuntimeError, MemoryError) as e:
                return self.fail(0, e, "evaluation failed: ")
            if self.is_main:
                print(f"epoch 0 (the KDE base alone): validation NLL {m['val_nll']:.4f}", flush=True)
        for epoch in bar:
            model.train()
            t0 = time.perf_counter()
            losses, nfe_f = [], 0
            for batch in self.epoch_batches():
                interrupts.check()  # a signal a callback swallowed (flows/interrupts.py)
                # every rank draws the same global batch and keeps its shard: with equal shards the
                # averaged gradients equal those of the whole batch in one process
                batch = [b.tensor_split(self.world)[self.rank].to(self.device) for b in batch]
                batch[0] = batch[0].to(self.dtype)
                try:
                    with self.autocast():
                        loss = self.loss_fn(*batch)  # mle: a true mean NLL in nats per sample
                    nfe_f = self.dynamics.nfe if self.dynamics is not None else 0
                    self.opt.zero_grad(set_to_none=True)
                    if not self.all_finite(loss):
                        raise FloatingPointError("loss is not finite")
                    with interrupts.deferred():  # inductor compiles a compiled graph's backward on first use
                        loss.backward()
                except (FloatingPointError, RuntimeError, MemoryError) as e:
                    return self.fail(epoch, e)
                self.nfe["forward"] += nfe_f
                self.nfe["backward"] += (self.dynamics.nfe if self.dynamics is not None else 0) - nfe_f
                self.nfe["steps"] += 1
                if optim.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(model)
                losses.append(self.mean_over_ranks(loss.detach()))
            self.sched.step()
            self.train_seconds += time.perf_counter() - t0
            # after the first compiled step inductor's cache holds the graph: later runs find it warm
            if self.compile_key is not None and self.dynamics.compiled:
                mark_warm(self.compile_key)
                self.compile_key = None
            loss_val = sum(losses) / len(losses)
            self.losses.append((epoch + 1, loss_val))
            bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{self.opt.param_groups[0]['lr']:.1e}", nfe=nfe_f)
            done = epoch + 1
            if run.contsave and done % run.save_freq == 0 and self.is_main:
                self.save_frame(done)
            is_eval = done % run.eval_freq == 0 or done == epochs
            if self.guard is not None and (done % self.settings.solver.guard_freq == 0 or is_eval):
                try:
                    self.solver_guard(done)
                except (FloatingPointError, RuntimeError, MemoryError) as e:
                    return self.fail(epoch, e, "solver guard failed: ")
            if is_eval:
                try:
                    m = self.evaluate(done, loss_val)
                except (FloatingPointError, RuntimeError, MemoryError) as e:  # SolverError is a RuntimeError
                    return self.fail(epoch, e, "evaluation failed: ")
                msg = self.task.eval_line(done, loss_val, m, self.objective.loss_name)
                if self.is_main:
                    (bar.write if not run.quiet else print)(msg)
                self.checkpoint(done)
        if stop < epochs:
            self.checkpoint(stop)
            if self.is_main:
                print(f"stopped after epoch {stop} of {epochs}; "
                      f"continue with --resume {self.out / 'checkpoint.pt'}")  # fmt: skip
            return 0
        self.finish()
        return 0

    def autocast(self):
        """``--amp bf16``: the training loss under bfloat16 autocast (matrix products of the field)."""
        on = self.settings.optim.amp == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

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
        """One epoch's batches, each a tuple of the loss's arguments (:mod:`train.objectives`)."""
        return self.objective.epoch_batches(
            self.task, self.model, self.settings.optim.batch_size, self.train_gen, self.dtype,
            paired=self.settings.optim.coupling == "paired", smooth=self.settings.optim.target_kappa,
        )  # fmt: skip

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
