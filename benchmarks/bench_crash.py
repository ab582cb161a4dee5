"""kill -9 probe of the project store (stack commits, checkpoints, exports, a reader all along).

Usage: python benchmarks/bench_crash.py [--iterations 1000] [--json out.json]
The same as `napari-hitl bench crash`; the test suite runs 100 iterations of it.
"""

from __future__ import annotations

import argparse
import sys

from napari_hitl.evaluate import bench_crash

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_crash.add_arguments(parser)
    sys.exit(bench_crash.run(parser.parse_args()))
