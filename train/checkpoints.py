"""A run's checkpoints: written atomically with a digest, read back safely and validated, restored."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import utils
from flows.checkpoint import with_digest
from utils import UserError

from .config import RUN_FILES
from .rundir import clean_temp_files


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


class Checkpointing:
    """The :class:`train.loop.Trainer`'s checkpoint methods (a mixin: it reads the trainer's state)."""

    def restore(self, ckpt):
        """Load a resumed checkpoint's state (weights, optimizer, schedules, RNGs, records)."""
        resume = self.settings.run.resume
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
                    b = read_checkpoint(
                        Path(resume).parent / "best.pt", required=("model", "epoch", "val_nll")
                    )
                except CheckpointError:
                    b = None
                rec = {h["epoch"]: h.get("val_nll") for h in self.history}
                if b is not None and rec.get(b["epoch"]) == b["val_nll"]:
                    self.best = {k: b[k] for k in ("model", "epoch", "val_nll")}
            if self.best is not None:
                copy.deepcopy(self.scored_model).load_state_dict(self.best["model"])  # it must fit the model
        except Exception as e:  # doctored or mismatched contents
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"--resume: {resume!r} does not fit the model it describes ({first})") from None

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
        own = resuming and self.out.resolve() == Path(self.settings.run.resume).resolve().parent
        if not own:  # a new run, or a resume into another folder: the files of the run there go
            for name in (*RUN_FILES, "best.pt"):
                (self.out / name).unlink(missing_ok=True)
        if resuming:  # a kill between a history append and the checkpoint rename left extra lines
            utils.atomic_write_text(
                "".join(json.dumps(h) + "\n" for h in self.history), self.out / "history.jsonl"
            )
            if self.best is not None and not own:
                self.write_best()

    def saved_args(self) -> dict:
        """The run's flags as saved (checkpoint.pt, metrics.json), with the training step the model holds
        now: the solver guard refines the model's step, the one source of truth once training runs."""
        args = {k: v for k, v in vars(self.args).items() if k != "explicit"}
        solver = getattr(self.model, "train_solver", None)
        if solver is not None and args.get("step_size") is not None:
            args["step_size"] = solver.step_size
        return args

    def checkpoint(self, epoch):
        if not self.is_main:
            return
        args = self.saved_args()
        extra = (
            {"raw_model": self.model.state_dict(), "ema_steps": self.ema.steps}
            if self.ema is not None
            else {}
        )
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

    def write_best(self):
        """best.pt: the best validation weights, for readers of the folder (the run itself reports from
        :attr:`best`, carried in checkpoint.pt)."""
        utils.atomic_torch_save(
            with_digest({**self.best, "model_config": self.model.config}), self.out / "best.pt"
        )
