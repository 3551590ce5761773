"""The four Earth event datasets on the sphere S^2 (volcano, earthquake, flood, fire).

The project ships the four catalogues in ``data/events/`` (provenance: ``data/events/README.md``).
``load_earth(name, data_dir)`` reads ``data_dir/<file>``; ``data_dir`` defaults to
``$MANIFOLD_ODE_EARTH_DATA`` when set, else the shipped folder. Each file lists (latitude,
longitude) in degrees, after comment lines (``#``) and an optional header; a point maps to
``x = (cos lat cos lon, cos lat sin lon, sin lat)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from manifolds import Sphere

#: dataset -> (file name, expected number of events, public source)
EARTH = {
    "volcano": ("volerup.csv", 827, "NOAA NCEI significant volcanic eruptions database (www.ngdc.noaa.gov)"),
    "earthquake": ("quakes_all.csv", 6120, "NOAA NCEI significant earthquake database (www.ngdc.noaa.gov)"),
    "flood": ("flood.csv", 4875, "Dartmouth Flood Observatory archive (floodobservatory.colorado.edu)"),
    "fire": ("fire.csv", 12809, "NASA FIRMS active fire data (earthdata.nasa.gov)"),
}
ENV_VAR = "MANIFOLD_ODE_EARTH_DATA"
#: fewest events for the 80/10/10 split to leave at least 2 validation and 2 test events
MIN_EVENTS = 20


#: The catalogues shipped with the project.
SHIPPED_DIR = Path(__file__).resolve().parent / "events"


def default_data_dir() -> Path:
    return Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else SHIPPED_DIR


def read_lat_lon(path) -> torch.Tensor:
    """(latitude, longitude) rows in degrees, shape ``(N, 2)`` float64; comments and a header skipped.

    Every data row is validated, wherever it is in the file: two numbers (optionally quoted), finite,
    latitude in [-90, 90], longitude in [-180, 360]. Only the first non-comment line may be a header
    (a line whose first field is not a number); any other bad row raises ``ValueError`` naming the
    file and the line. Lines are UTF-8 (a byte-order mark is ignored); a comment in another encoding
    is skipped like any comment, a data line that is not UTF-8 is a bad row.
    """
    rows = []
    seen_first = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                if raw.lstrip().startswith(b"#"):
                    continue
                raise ValueError(f"{path}, line {lineno}: not UTF-8 text") from None
            if not line or line.startswith("#"):
                continue
            first, seen_first = not seen_first, True
            parts = [p.strip().strip('"').strip("'").strip() for p in line.split(",")]
            try:
                if len(parts) < 2:
                    raise ValueError
                lat, lon = float(parts[0]), float(parts[1])
            except ValueError:
                if first and not _numeric(parts[0]):  # the header: only the first non-comment line
                    continue
                raise ValueError(
                    f"{path}, line {lineno}: expected 'latitude,longitude', got {line[:60]!r}"
                ) from None
            if not (math.isfinite(lat) and math.isfinite(lon)):
                raise ValueError(
                    f"{path}, line {lineno}: latitude/longitude must be finite, got {line[:60]!r}"
                )
            if not (-90 <= lat <= 90 and -180 <= lon <= 360):
                raise ValueError(
                    f"{path}, line {lineno}: latitude must be in [-90, 90] and longitude in [-180, 360], "
                    f"got {lat:g}, {lon:g}"
                )
            rows.append((lat, lon))
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)


def _numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_earth(name: str, data_dir=None) -> torch.Tensor:
    """Events of dataset ``name`` as points on S^2, shape ``(N, 3)`` float64.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        FileNotFoundError: the file is missing (the message names it and where to get it).
    """
    if name not in EARTH:
        raise ValueError(f"unknown Earth dataset {name!r}; valid: {', '.join(EARTH)}")
    fname, _, source = EARTH[name]
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = data_dir / fname
    if not path.is_file():
        raise FileNotFoundError(
            f"Earth dataset {name!r} needs {path} (from the {source}); point --data_dir or ${ENV_VAR} "
            f"at a folder holding volerup.csv, quakes_all.csv, flood.csv and fire.csv (or leave both unset "
            f"for the copies shipped in {SHIPPED_DIR})"
        )
    ll = read_lat_lon(path)
    if len(ll) == 0:
        raise ValueError(f"{path} holds no (latitude, longitude) rows")
    lat, lon = ll[:, 0] * (math.pi / 180), ll[:, 1] * (math.pi / 180)
    return Sphere.lonlat_to_xyz(lon, lat)


def split_indices(n: int, seed: int, fractions=(0.8, 0.1, 0.1)):
    """A random partition of ``range(n)`` into train/val/test index tensors, deterministic in ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


class EarthData:
    """A finite dataset with its train/val/test split (80/10/10 by ``split_seed``)."""

    def __init__(self, name: str, data_dir=None, split_seed: int = 0):
        self.name = name
        self.manifold = Sphere(2)
        self.x = load_earth(name, data_dir)
        if len(self.x) < MIN_EVENTS:
            raise ValueError(
                f"Earth dataset {name!r} has {len(self.x)} events; the 80/10/10 split needs at least {MIN_EVENTS}"
            )
        tr, va, te = split_indices(len(self.x), split_seed)
        self.train, self.val, self.test = self.x[tr], self.x[va], self.x[te]

    def batches(self, batch_size: int, generator):
        """Shuffled minibatches covering the training split once (one epoch)."""
        perm = torch.randperm(len(self.train), generator=generator)
        for i in range(0, len(perm), batch_size):
            yield self.train[perm[i : i + batch_size]]
