"""Write the demo page's sample wafer maps: `python -m model_server.web.make_samples [--out DIR]`.

Synthetic maps (data_tools.synthetic) of several classes, rendered in different palettes
(data_tools.render) as small PNGs, plus `samples.json`, the list the page shows. Each image
is read back with data_tools.image_reader before it is kept, so every sample is known to be
readable by the server. Reproducible: the same seed writes the same maps.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools import taxonomy
from data_tools.image_reader import read_wafer_image
from data_tools.render import render
from data_tools.synthetic import generate
from data_tools.wafer_map import WaferMap

DEFAULT_OUT = Path(__file__).resolve().parent / "static" / "samples"
MANIFEST_NAME = "samples.json"
DEFAULT_SEED = 7
PIXELS_PER_DIE = 4


@dataclass(frozen=True)
class SampleSpec:
    defect_class: str  # a MixedWM38 class name, e.g. "Center+Scratch"
    palette: str  # a data_tools.render palette


#: The samples: single patterns and mixtures, in the palettes users meet (grey, fab tools, matplotlib).
SAMPLES: tuple[SampleSpec, ...] = (
    SampleSpec("Center", "grey"),
    SampleSpec("Donut", "fab"),
    SampleSpec("Edge_Loc", "viridis"),
    SampleSpec("Edge_Ring", "grey"),
    SampleSpec("Loc", "fab"),
    SampleSpec("Scratch", "grey"),
    SampleSpec("Center+Scratch", "fab"),
    SampleSpec("Donut+Edge_Loc", "viridis"),
    SampleSpec("Edge_Ring+Loc+Scratch", "grey"),
    SampleSpec("Normal", "fab"),
)


class SampleError(RuntimeError):
    """A generated sample that the image reader does not read back as the map it shows."""


def file_name(spec: SampleSpec) -> str:
    return spec.defect_class.lower().replace("+", "-").replace("_", "") + ".png"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temporary file in the same folder and a rename: never half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_sample(spec: SampleSpec, rng: np.random.Generator) -> tuple[WaferMap, bytes]:
    """One synthetic map of the spec's class and its PNG, checked to read back to the same grid."""
    wafer = generate(spec.defect_class, rng)
    image = render(wafer, spec.palette, scale=PIXELS_PER_DIE, margin=PIXELS_PER_DIE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    data = buffer.getvalue()
    read = read_wafer_image(data, expected_shape=wafer.shape)
    if not np.array_equal(read.grid, wafer.grid):
        differing = int((read.grid != wafer.grid).sum())
        raise SampleError(f"{spec.defect_class} ({spec.palette}): read back with {differing} dies differing")
    return wafer, data


def write_samples(out_dir: Path = DEFAULT_OUT, seed: int = DEFAULT_SEED) -> Path:
    """Write every sample PNG and the manifest into `out_dir`; returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for spec in SAMPLES:
        wafer, data = make_sample(spec, rng)
        cls = taxonomy.parse_class_name(spec.defect_class)
        name = file_name(spec)
        _write_atomic(out_dir / name, data)
        entries.append({
            "file": name,
            "class": cls.name,
            "patterns": list(cls.patterns),
            "names": {"en": cls.english, "zh": cls.chinese},
            "palette": spec.palette,
            "dies": wafer.dies,
            "failing": wafer.failing,
        })
    manifest = out_dir / MANIFEST_NAME
    document = {
        "generated_by": "python -m model_server.web.make_samples",
        "seed": seed,
        "note": "synthetic maps (data_tools.synthetic); not MixedWM38 data",
        "samples": entries,
    }
    _write_atomic(manifest, (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder to write (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    manifest = write_samples(args.out, args.seed)
    count = len(json.loads(manifest.read_text(encoding="utf-8"))["samples"])
    print(f"wrote {count} sample maps and {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
