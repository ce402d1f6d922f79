"""Command line: ``python -m maskseg_monai.data {prepare,demo} ...``.

Exit status: 0 on success, 1 when a dataset fails verification, 2 for a bad manifest or bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from maskseg_monai.data.demo import DEMO_SETS, materialize_demo
from maskseg_monai.data.manifest import ManifestError, VerificationError, lock_path, prepare_dataset
from maskseg_monai.utils import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.data",
        description="Verify a dataset against its manifest and write its MONAI datalist, or write the demo sets.",
        epilog="Exit status: 0 success, 1 dataset failed verification, 2 bad manifest or arguments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="verify a dataset against a manifest and write its MONAI datalist")
    prep.add_argument("manifest", help="manifest JSON (see data_manifests/README.md)")
    prep.add_argument("--root", required=True, help="folder holding the dataset")
    prep.add_argument("--output", help="datalist path (default: ROOT/<name>_datalist.json)")
    prep.add_argument("--val-fraction", type=float, help="random validation fraction in [0, 1); overrides the manifest")
    prep.add_argument("--seed", type=int, help="seed of the random split (default: manifest's, else 0)")
    prep.add_argument(
        "--write-checksums",
        action="store_true",
        help="record sha256 of every matched file in a lock file beside the datalist",
    )
    demo = sub.add_parser("demo", help="materialise the offline demo sets and print their datalist paths")
    demo.add_argument("--root", required=True, help="folder receiving one subfolder per demo set")
    demo.add_argument("--names", nargs="+", default=["all"], help=f"demo sets (default: all): {', '.join(DEMO_SETS)}")
    demo.add_argument("--overwrite", action="store_true", help="rewrite sets that are already complete")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = _parser().parse_args(argv)

    def run() -> None:
        if args.command == "prepare":
            out = prepare_dataset(args.manifest, args.root, args.output, args.val_fraction, args.seed,
                                  args.write_checksums)  # fmt: skip
            print(out)
            if args.write_checksums:
                print(lock_path(out))
        else:
            names = "all" if args.names == ["all"] else args.names
            for name, path in materialize_demo(args.root, names, args.overwrite).items():
                print(f"{name}: {path}")

    return run_command(run, [(VerificationError, 1), ((ManifestError, ValueError, FileNotFoundError), 2)])


if __name__ == "__main__":
    sys.exit(main())
