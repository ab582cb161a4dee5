"""Scale benchmark: predict + rank a generated project on Dask with 1 and 2 workers.

Usage: python benchmarks/bench_scale.py [--n 20000] [--size 512] [--json out.json]
       xvfb-run -a python benchmarks/bench_scale.py --big-image [--side 20000] [--json docs/bench/scale_bigimage.json]
(one generated whole-slide image: first view in napari, time per click, peak memory).
The same as `napari-hitl bench scale`.
"""

from __future__ import annotations

import argparse
import sys

from napari_hitl.evaluate import bench_scale

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_scale.add_arguments(parser)
    sys.exit(bench_scale.run(parser.parse_args()))
