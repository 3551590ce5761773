"""scripts.combine_fields: the two ways to combine trained fields (field average, density mixture)."""

import math

import torch

from flows import MCNF, FieldAverage
from flows.evaluation import model_log_prob, solve_copy
from scripts import combine_fields as cf
from utils import run_cli


def test_density_mixture_nll():
    a = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    assert math.isclose(cf.mixture_nll([a, a]), -a.mean().item(), rel_tol=1e-12)  # a mixture of one density
    b = torch.tensor([0.0, -3.0, 1.0], dtype=torch.float64)
    want = -torch.log((a.exp() + b.exp()) / 2).mean().item()
    assert math.isclose(cf.mixture_nll([a, b]), want, rel_tol=1e-12)
    assert cf.mixture_nll([a, b]) <= (-(a.mean()) - b.mean()).item() / 2 + 1e-12  # Jensen


def test_field_average_of_copies_is_the_same_density():
    torch.manual_seed(0)
    model = MCNF("Sphere", hidden=8, n_hidden=1).eval()
    f = model.field
    assert cf.members(f) == [f]
    avg = FieldAverage([f, f])
    assert cf.members(avg) == [f, f]
    x = model.manifold.random(16, generator=torch.Generator().manual_seed(1)).double()
    lp = model_log_prob(solve_copy(model), x)
    lp_avg = model_log_prob(solve_copy(cf.with_field(model, avg)), x)
    assert torch.allclose(lp, lp_avg, atol=1e-9)
    assert model.field is f  # the copy's field changed, not the model's


def test_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert run_cli(cf.main, "scripts.combine_fields", [str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
