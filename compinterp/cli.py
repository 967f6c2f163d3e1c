"""The ``compinterp`` command line: parses arguments and calls the library.

Library modules are imported inside the commands, so ``compinterp --help`` and
``compinterp --version`` start without importing torch or discopy.

>>> main(["--version"])  # doctest: +ELLIPSIS
compinterp ...
0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from compinterp import __version__

_EPILOG = """examples:
  compinterp info runs/digits
  compinterp check runs/digits runs/explanation --data digits
  compinterp draw runs/digits -o digits.svg

Run 'compinterp COMMAND --help' for a command's options and an example."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    0 on success, 1 on a user error (a one-line ``compinterp: error: ...`` on
    stderr; the traceback too with ``--debug``), 2 on bad usage.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from compinterp.errors import CompinterpError
    try:
        args.run(args)
    except (CompinterpError, OSError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"compinterp: error: {message}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="compinterp", description="Compositional interpretability: neural networks as string diagrams.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"compinterp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    draw = _command(commands, "draw", _draw, "draw a saved model's diagram to a PNG or SVG file",
                    "compinterp draw runs/digits -o digits.svg")
    draw.add_argument("model", metavar="MODEL_DIR", help="a directory written by compinterp.save")
    draw.add_argument("-o", "--output", metavar="FILE", required=True, help="the picture to write (.png or .svg)")
    draw.add_argument("--fontsize", type=float, default=10, help="label size in points (default: 10)")
    draw.add_argument("--no-kinds", action="store_true", help="label boxes with their names only")

    info = _command(commands, "info", _info, "describe a saved model: spaces, boxes, parameter counts",
                    "compinterp info runs/digits --json")
    info.add_argument("model", metavar="MODEL_DIR", help="a directory written by compinterp.save")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    check = _command(commands, "check", _check,
                     "measure how faithful an explanation (or a second model) is to a model",
                     "compinterp check runs/digits runs/refined --data digits --json")
    check.add_argument("model", metavar="MODEL_DIR", help="the model explained (a directory written by compinterp.save)")
    check.add_argument("explanation", metavar="EXPLANATION_OR_MODEL_DIR",
                       help="a saved interpretation of the model, or a second model with the same input and "
                            "output spaces (compared end to end)")
    check.add_argument("--data", default="gaussian:10000", metavar="SPEC",
                       help="digits (held-out digits), gaussian:N[:SEED], FILE.pt, or exact (from the weights "
                            "alone, for polynomial models; default: gaussian:10000)")
    check.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    check.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    check.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def _command(commands: Any, name: str, run: Callable[[argparse.Namespace], None], summary: str,
             example: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (with ``--debug`` and an example in its help) that calls ``run``."""
    sub = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                              epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show the full traceback of an error")
    sub.set_defaults(run=run)
    return sub


def _draw(args: argparse.Namespace) -> None:
    """``compinterp draw``: the diagram of a saved model, to a file."""
    from compinterp.drawing import draw
    from compinterp.files import read_diagram
    path = draw(read_diagram(args.model), args.output, kinds=not args.no_kinds, fontsize=args.fontsize)
    print(f"wrote {path}")


def _info(args: argparse.Namespace) -> None:
    """``compinterp info``: what a saved model holds, as a table or JSON."""
    from compinterp.files import info
    summary = info(args.model)
    print(json.dumps(summary, indent=1) if args.json else _table(summary))


def _check(args: argparse.Namespace) -> None:
    """``compinterp check``: the faithfulness report of an explanation or a second model."""
    from compinterp.faithfulness import check
    from compinterp.files import load
    from compinterp.interpretation import Interpretation
    from compinterp.interpretation.files import is_interpretation
    from compinterp.tasks import data_from_spec
    model = load(args.model)
    other = Interpretation.load(args.explanation, model) if is_interpretation(args.explanation) \
        else load(args.explanation)
    data = "exact" if args.data == "exact" else data_from_spec(args.data)
    report = check(model, other, data, batch_size=args.batch_size, device=args.device, progress=not args.json)
    print(json.dumps(report.to_json(), indent=1) if args.json else report)


def _table(summary: dict[str, Any]) -> str:
    """The output of ``compinterp info``: spaces, one line per box, and the parameter total."""
    def spaces(names: list[str]) -> str:
        return " @ ".join(names) or "()"

    rows = [(box["name"] + (f" (x{box['uses']})" if box["uses"] > 1 else ""), box["kind"],
             f"{spaces(box['dom'])} -> {spaces(box['cod'])}", f"{box['params']:,}") for box in summary["boxes"]]
    header = ("box", "kind", "spaces", "params")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [f"model   {summary['path']}", f"inputs  {spaces(summary['dom'])}",
             f"outputs {spaces(summary['cod'])}", ""]
    for row in (header, *rows):
        lines.append("  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths)), row[3].rjust(widths[3])]))
    lines += ["", f"{summary['num_params']:,} parameters in {len(summary['boxes'])} boxes"]
    return "\n".join(lines)
