"""Step-count benchmark: the same engine and arguments as ``sde-diffusion bench``.

    python benchmarks/step_count.py --quick
    python benchmarks/step_count.py --preset committed      # benchmarks/results + docs/benchmarks.md
    python benchmarks/step_count.py --model digits --n 1000 --nfe 5,10,20 --out benchmarks/results_n1000

Reference solves are read from --cache-dir (default benchmarks/results/cache when run from the
repository root). ``sde-diffusion bench report OUT`` rebuilds tables and plots from rows.jsonl.
"""

import argparse
import sys

from sde_diffusion.commands.bench import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"step_count: error: {e}", file=sys.stderr)
        sys.exit(2)
