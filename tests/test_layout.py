"""The package layering and explicit precision promised in the README's layout table."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data import DATASETS, get_density

ROOT = Path(__file__).resolve().parents[1]


def _imported_after(stmt):
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def _has(mods, pkg):
    return any(m == pkg or m.startswith(pkg + ".") for m in mods)


def test_flows_does_not_import_data_and_viz_loads_no_model():
    mods = _imported_after("import flows")
    assert not _has(mods, "data") and not _has(mods, "train") and not _has(mods, "viz")
    mods = _imported_after("import viz.figures, viz.paper_grid")
    assert not _has(mods, "flows") and not _has(mods, "data") and not _has(mods, "train")


def test_old_distribution_imports_still_work():
    from data.distributions import WrappedNormal as A
    from manifolds.distributions import WrappedNormal as B

    assert A is B


@pytest.mark.parametrize("manifold,dataset", [(m, d) for m, ds in DATASETS.items() for d in ds])
def test_density_precision_is_explicit(manifold, dataset):
    """Same draws whatever the global default dtype; ``dtype=`` sets the points' precision."""
    prev = torch.get_default_dtype()
    out = {}
    try:
        for default in (torch.float32, torch.float64):
            torch.set_default_dtype(default)
            den = get_density(manifold, dataset)
            x = den.sample(64, generator=torch.Generator().manual_seed(3))
            x32 = den.sample(64, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
            out[default] = (x, x32, den.log_prob(x))
    finally:
        torch.set_default_dtype(prev)
    (x_a, x32_a, lp_a), (x_b, x32_b, lp_b) = out[torch.float32], out[torch.float64]
    assert x_a.dtype == torch.float64 and x32_a.dtype == torch.float32
    assert torch.equal(x_a, x_b) and torch.equal(x32_a, x32_b) and torch.equal(lp_a, lp_b)
    assert torch.isfinite(lp_a).all()
    den32 = get_density(manifold, dataset, dtype=torch.float32)
    assert den32.dtype == torch.float32 and den32.sample(8).dtype == torch.float32


def test_scripts_run_as_modules(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scripts.paper_grid", str(tmp_path / "g.png"), str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "no checkpoint.pt" in r.stderr
    for f in [*ROOT.glob("scripts/*.py"), *ROOT.glob("benchmarks/*.py")]:
        assert "sys.path" not in f.read_text(), f


def test_no_two_modules_import_each_other():
    """Every import counts, including those inside functions (issue #25: they had hidden two cycles)."""
    import ast

    def module_name(path):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = [p for d in ("manifolds", "data", "flows", "viz", "train", "scripts", "benchmarks")
             for p in (ROOT / d).rglob("*.py")] + [ROOT / "utils.py", ROOT / "main_density.py"]  # fmt: skip
    names = {module_name(p) for p in files}
    edges = {}
    for p in files:
        me = module_name(p)
        package = me if p.name == "__init__.py" else me.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base]) if base else ".".join(up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in names and t != me:
                    edges.setdefault(me, set()).add(t)
    cycles = sorted(
        {tuple(sorted((a, b))) for a, bs in edges.items() for b in bs if a in edges.get(b, set())}
    )
    # a package's __init__ re-exports its modules, which import siblings through it: not a cycle of code
    cycles = [c for c in cycles if c[0] != c[1].rpartition(".")[0] and c[1] != c[0].rpartition(".")[0]]
    assert cycles == [], cycles
