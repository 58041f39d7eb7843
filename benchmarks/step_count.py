"""Step-count benchmark: the same engine and arguments as ``sde-diffusion bench``.

    python benchmarks/step_count.py --quick
    python benchmarks/step_count.py --model digits --n 1000 --out benchmarks/results
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
