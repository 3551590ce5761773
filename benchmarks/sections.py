"""The markers of the sections that each benchmark script owns on docs/benchmark.md.

``benchmarks.benchmark`` rewrites the page and puts these sections back; ``benchmarks.dimensions``,
``benchmarks.regularization`` and ``benchmarks.fused`` rewrite their own. Kept here so that no benchmark imports another.
"""

DIMENSIONS = ("<!-- dimensions: written by python -m benchmarks.dimensions -->", "<!-- end of dimensions -->")
REGULARIZATION = (
    "<!-- regularization: written by python -m benchmarks.regularization -->",
    "<!-- end of regularization -->",
)
FUSED = ("<!-- fused: written by python -m benchmarks.fused -->", "<!-- end of fused -->")
