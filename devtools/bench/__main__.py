"""`make bench`: run the benchmarks one after another; each rewrites its section of docs/BENCHMARKS.md.

python -m devtools.bench                     # all of them
python -m devtools.bench listing handlers    # some
python -m devtools.bench --quick listing     # fewer runs, smaller tables: while developing, not for the docs
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time

BENCHMARKS = ("handlers", "cold_start", "listing", "batch", "retention", "lateness", "aws_path", "peer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="any of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller tables; no docs written")
    args = parser.parse_args(argv)
    if unknown := set(args.names) - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in args.names or BENCHMARKS:
        began = time.monotonic()
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"devtools.bench.{name}")
        markdown = module.run(quick=args.quick)
        if args.quick:
            print(markdown)
        else:
            from devtools.bench.common import write_section

            write_section(name, markdown)
        print(f"== {name} done in {time.monotonic() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
