"""Every benchmark behind one command: `python -m training.bench NAME [options]`.

Each benchmark lives in its own module `training/bench/NAME.py` and exposes
`main`: either `main(argv: list[str] | None)` parsing its own options, or a
function with typer-style keyword options. Adding a module adds a subcommand.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path


def available() -> dict[str, str]:
    """Benchmark name -> first line of its module docstring."""
    folder = Path(__file__).parent
    found = {}
    for info in pkgutil.iter_modules([str(folder)]):
        if not info.name.startswith("_"):
            doc = (folder / f"{info.name}.py").read_text().split('"""')
            found[info.name] = doc[1].strip().splitlines()[0] if len(doc) > 1 else ""
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not args or args[0] in ("-h", "--help") or args[0] not in names:
        if args and args[0] not in ("-h", "--help"):
            print(f"unknown benchmark {args[0]!r}", file=sys.stderr)
        print("usage: python -m training.bench NAME [options]   (NAME --help for its options)\n")
        for name, line in names.items():
            print(f"  {name:<10} {line}")
        raise SystemExit(0 if not args or args[0] in ("-h", "--help") else 2)
    module = importlib.import_module(f"training.bench.{args[0]}")
    entry = module.main
    params = inspect.signature(entry).parameters
    if "argv" in params:
        entry(args[1:])
    else:  # a typer-style function: let typer parse its keyword options
        import typer

        app = typer.Typer(add_completion=False)
        app.command()(entry)
        app(args=args[1:], prog_name=f"python -m training.bench {args[0]}")


if __name__ == "__main__":
    main()
