"""Tasks: where a run's data comes from, how it is evaluated, and what it draws.

The trainer talks to one small interface, so a new data source is one new class:

- ``train_batches(batch_size, generator, dtype)``: the batches of one epoch (drawn in ``dtype``);
- ``random_batch(batch_size, generator, dtype)``: one batch (flow matching: one epoch is one batch);
- ``x_test`` (and ``x_select`` when the task selects its model on a validation split, else None);
- ``truth``: the exact log-density (KL against it is reported), or None for real data;
- ``eval_line``, ``done_line``: the log lines; ``figure`` and ``sample_panels``: the pictures.

``SyntheticTask``: a paper density with an exact log-density; one epoch is one fresh batch (as the
reference); every evaluation measures test NLL, entropy and KL. ``EarthTask``: a finite Earth
event catalogue split 80/10/10; one epoch is one pass over the training split; evaluations measure
the validation NLL and the best model is reported on the test split.
"""

from __future__ import annotations

import torch

from utils import UserError

#: The test set does not depend on the training seed.
TEST_SEED = 20_201_206
#: Samples per panel of the marginal figures drawn for n != 2.
FIGURE_SAMPLES = 20_000


def is_earth(dataset) -> bool:
    from data.earth import EARTH

    return dataset in EARTH


def build_task(settings):
    """The task of a run's frozen settings (:mod:`train.settings`), validated: a bad name or file is a
    :class:`UserError`."""
    run, model = settings.run, settings.model
    if is_earth(run.dataset):
        return EarthTask(run.dataset, run.data_dir, run.split_seed, model.manifold, model.dim)
    return SyntheticTask(run.dataset, model.manifold, model.dim, run.test_size)


class SyntheticTask:
    def kde_base(self, kappas=None):
        raise UserError(
            "--base kde needs a finite training split (the Earth datasets), not a synthetic density"
        )

    x_select = None

    def __init__(self, dataset: str, manifold: str, dim: int, test_size: int):
        from data import get_density

        self.name, self.manifold, self.dim = dataset, manifold, dim
        try:  # the true density is built, and the test set drawn, in float64 whatever the model's dtype
            self.density = get_density(manifold, dataset, dtype=torch.float64, dim=dim)
        except ValueError as e:
            extra = (
                "; Earth data on the Sphere: volcano, earthquake, flood, fire"
                if manifold == "Sphere" and dim == 2
                else ""
            )
            raise UserError(f"{e}{extra}") from None
        self.x_test = self.density.sample(test_size, generator=torch.Generator().manual_seed(TEST_SEED))

    def truth(self, x):
        return self.density.log_prob(x.cpu().double()).double()

    def train_batches(self, batch_size, generator, dtype):
        return [self.density.sample(batch_size, generator=generator, dtype=dtype)]

    def random_batch(self, batch_size, generator, dtype):
        return self.density.sample(batch_size, generator=generator, dtype=dtype)

    def eval_line(self, epoch, loss, m, loss_name="train NLL"):
        return (f"epoch {epoch}: {loss_name} {loss:.4f}  test NLL {m['test_nll']:.4f}  "
                f"entropy {m['entropy']:.4f}  KL {m['kl']:.4f} +- {m['kl_stderr']:.4f}")  # fmt: skip

    def done_line(self, metrics, seconds, out):
        return (f"done: test NLL {metrics['test_nll']:.4f}, entropy {metrics['entropy']:.4f}, "
                f"KL {metrics['kl']:.4f} +- {metrics['kl_stderr']:.4f} in {seconds:.1f} s; results in {out}")  # fmt: skip

    def figure(self, model_log_prob, path, res, progress, model_sample=None):
        """Densities on the manifold (n = 2); for n != 2, the pairwise marginals of samples
        (``model_sample(k)``) beside the truth's, in the exponential chart at the origin."""
        from viz import figures

        if self.dim != 2:
            figures.marginals_figure(self.sample_panels(model_sample(FIGURE_SAMPLES), FIGURE_SAMPLES),
                                     self.manifold, path)  # fmt: skip
            return
        figures.density_figure({"ground truth": self.density.log_prob, "model": model_log_prob}, self.manifold,
                               path, res=res, progress=progress)  # fmt: skip

    def sample_panels(self, x_model, n):
        gen = torch.Generator().manual_seed(TEST_SEED + 1)
        return {"model samples": x_model, "true samples": self.density.sample(n, generator=gen)}


class EarthTask:
    truth = None

    def __init__(
        self, dataset: str, data_dir=None, split_seed: int = 0, manifold: str = "Sphere", dim: int = 2
    ):
        from data.earth import EarthData

        if manifold != "Sphere" or dim != 2:
            raise UserError(
                f"the Earth datasets live on the 2-sphere; use --M Sphere --dim 2 with --dataset {dataset}"
            )
        try:
            self.data = EarthData(dataset, data_dir, split_seed)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        self.name, self.manifold = dataset, "Sphere"
        self.x_select, self.x_test = self.data.val, self.data.test

    #: The ladders of concentrations tried for ``--base kde`` (:meth:`kde_base`): four kernels, from
    #: ``lo`` to ``hi`` in geometric steps (a kernel of concentration k has an angular scale 1/sqrt(k):
    #: 100 is 570 km on the Earth, 6.6e6 is 2.5 km).
    KDE_LO, KDE_HI, KDE_M, KDE_EPS = (
        (100, 400, 1600, 6400),
        (25_600, 102_400, 409_600, 1_638_400, 6_553_600),
        4,
        0.01,
    )

    def kde_base(self, kappas=None, max_kappa=None):
        """The KDE base's centres (the training split) and its concentrations: ``kappas`` when given
        (``--kde_kappas``), else the ladder chosen by the validation NLL of the KDE alone (never the test
        split), among the ladders whose sharpest kernel is at most ``max_kappa`` when given (a ``UserError``
        when none is); returns ``(centers, kappas, val_nll)``."""
        from manifolds.distributions import MultiscaleKDE

        def val_nll(ks):
            return -float(MultiscaleKDE(self.data.train, ks, self.KDE_EPS).log_prob(self.data.val).mean())

        if kappas is not None:
            return self.data.train, list(kappas), val_nll(kappas)
        ladders = [[lo * (hi / lo) ** (i / (self.KDE_M - 1)) for i in range(self.KDE_M)]
                   for lo in self.KDE_LO for hi in self.KDE_HI if max_kappa is None or hi <= max_kappa]  # fmt: skip
        if not ladders:
            raise UserError(f"no ladder of the KDE has its sharpest kernel at most {max_kappa:g}")
        return min(((self.data.train, ks, val_nll(ks)) for ks in ladders), key=lambda r: r[2])

    def train_batches(self, batch_size, generator, dtype):
        return [x.to(dtype) for x in self.data.batches(batch_size, generator)]

    def random_batch(self, batch_size, generator, dtype):
        idx = torch.randint(0, len(self.data.train), (batch_size,), generator=generator)
        return self.data.train[idx].to(dtype)

    def eval_line(self, epoch, loss, m, loss_name="train NLL"):
        return f"epoch {epoch}: {loss_name} {loss:.4f}  validation NLL {m['val_nll']:.4f}"

    def done_line(self, metrics, seconds, out):
        st = metrics.get("stack")
        stacked = (f"; stacked with the KDEs (flow weight {st['weight_flow']:.3f}): test NLL {st['test_nll']:.4f}"
                   if st else "")  # fmt: skip
        return (f"done: test NLL {metrics['test_nll']:.4f} (best validation epoch {metrics['best_epoch']}){stacked} "
                f"in {seconds:.1f} s; results in {out}")  # fmt: skip

    def figure(self, model_log_prob, path, res, progress, model_sample=None):
        from viz import figures

        values = figures.top_log_density(
            figures.density_values(model_log_prob, "Sphere", res, progress=progress)
        )
        title = f"{self.name}: model log-density (top {figures.LOG_RANGE:.0f} nats), test events"
        figures.plot_panels([dict(title=title, values=values,
                                  scatter=figures.to_plane(self.x_test, "Sphere"))], "Sphere", path, stock=True)  # fmt: skip

    def sample_panels(self, x_model, n):
        return {"model samples": x_model, "test events": self.x_test}
