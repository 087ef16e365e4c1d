"""``cytofm config write`` regenerates the schema, config.yaml and the configuration
reference from the dataclasses; ``--check`` exits 1 naming the stale files."""

import argparse
import sys
from pathlib import Path

from cytofm.config.generate import generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cytofm.config", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated files")
    mode.add_argument("--check", action="store_true", help="fail when one is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated(args.root).items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.write:
            path.write_text(text)
            print(f"wrote {path}")
        else:
            stale.append(str(path))
    if stale:
        print(f"stale: {', '.join(stale)}; run cytofm config write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
