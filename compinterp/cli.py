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
from dataclasses import replace
from typing import Any

from compinterp import __version__

TASK_NAMES = ("digits", "modular", "gates", "text")
"""The tasks ``compinterp train`` knows (``compinterp.tasks.train.TASKS``, named here so start-up imports no torch)."""

DEFAULT_PASSES = ("fuse", "eigen", "lowrank", "prune", "odt", "cp")
"""The passes ``compinterp refine`` runs by default (``compinterp.refinement.passes.default_passes()``, named
here so start-up imports no torch)."""

ENCODER = ("kind", "l0")
"""The dictionary options that set an SAE's or a transcoder's encoder (a bilinear autoencoder has its own)."""

SIGPIPE_STATUS = 141
"""The exit status when stdout's reader has gone (``compinterp info | head``): 128 + SIGPIPE, as a shell reports
a program killed by a closed pipe."""

_DATA_HELP = ("exact (from the weights alone, for polynomial models), digits or modular (a task's held-out data, "
              "with labels), gaussian:N[:SEED] (N generated samples fitting the model's input wires: Gaussian "
              "vectors, uniform token ids, sequences of the model's context) or FILE.pt (tensors saved with "
              "torch.save: one per input wire, then optionally labels); default: exact where the model (and a "
              "second model) are polynomial, else gaussian:10000 (sequence models: sequences adding up to about "
              "10,000 positions)")

_EPILOG = """examples:
  compinterp demo --out runs/demo
  compinterp demo lm --out runs/lm
  compinterp train digits --out runs/digits
  compinterp info runs/digits
  compinterp check runs/digits runs/explanation --data digits
  compinterp refine runs/digits --min-faithfulness 0.99 --out runs/refined
  compinterp draw runs/digits -o digits.svg
  compinterp import path/to/hf_checkpoint --out runs/imported

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
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return SIGPIPE_STATUS
    except (CompinterpError, OSError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"compinterp: error: {message}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as err:
        if args.debug or not _out_of_memory(err):
            raise
        detail = " ".join(str(err).split())[:200]
        print(f"compinterp: error: out of memory{': ' + detail if detail else ''} (a smaller --batch-size or "
              "another --device may help)", file=sys.stderr)
        return 1
    return 0


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (Python's ``MemoryError``, or torch's allocators on any device)."""
    text = str(err)
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush does not fail again on the
    closed pipe (Python's documented way out of a ``BrokenPipeError``)."""
    import os
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


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

    info = _command(commands, "info", _info,
                    "describe a saved model: spaces, boxes, parameter counts, description length",
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
    check.add_argument("--data", metavar="SPEC", help=_DATA_HELP)
    check.add_argument("--fit", metavar="SPEC",
                       help="with --data exact (implied): compare under the Gaussian with the mean and covariance of "
                            "these input vectors (digits, gaussian:N[:SEED] or FILE.pt) instead of N(0, I)")
    check.add_argument("--logits", metavar="WIRE",
                       help="the output wire that holds logits, for KL, top-1 agreement, loss recovered and label "
                            "accuracy (default: an output labelled logits or made by an Unembed box)")
    check.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    check.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    check.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    _trust_code(check)

    refine = _command(commands, "refine", _refine,
                      "search for a shorter model that stays faithful to a saved model, and save it",
                      "compinterp refine runs/digits --min-faithfulness 0.99 --out runs/refined --data digits")
    refine.add_argument("model", metavar="MODEL_DIR", help="the model to refine (a directory written by compinterp.save)")
    refine.add_argument("--min-faithfulness", type=float, default=0.99, metavar="F",
                        help="the bar: end-to-end faithfulness (1 - FVU) the refined model keeps (default: 0.99)")
    refine.add_argument("--metric", choices=("faithfulness", "loss_recovered"), default="faithfulness",
                        help="what the bar is on: faithfulness, or the loss recovered on the data's labels "
                             "(logit models, with data; default: faithfulness)")
    refine.add_argument("--out", metavar="DIR", required=True, help="where to save the refined model")
    refine.add_argument("--data", "--search-data", dest="data", metavar="SPEC",
                        help="the data the search scores candidates on: " + _DATA_HELP)
    refine.add_argument("--holdout", type=float, metavar="F",
                        help="the fraction of the data's samples held out of the search, to check the refined model "
                             "on once it is chosen (default: 0.5; 0 holds nothing out; exact data needs none)")
    refine.add_argument("--test-data", metavar="SPEC",
                        help="held-out data to check the refined model on, instead of --holdout (the forms --data "
                             "takes)")
    refine.add_argument("--passes", metavar="NAMES",
                        help="comma-separated rewrite passes, e.g. eigen,lowrank,prune or eigen,sae (the dictionary "
                             "passes sae, transcoder and bilinear_ae train on the search data; default: "
                             f"{','.join(DEFAULT_PASSES)})")
    refine.add_argument("--pass", dest="dictionary", choices=("sae", "transcoder", "bilinear_ae"),
                        help="add one dictionary pass, trained on the search data (alone unless --passes is "
                             "given; see docs/dictionary.md)")
    refine.add_argument("--wire", metavar="BOX", help="dictionary passes: the box whose output wire (or, for a "
                                                     "transcoder, which box) the dictionary refines (default: every "
                                                     "box with one input and one output wire)")
    refine.add_argument("--widths", metavar="F,...", help="dictionary passes: widths to try (default: 64,32,16)")
    refine.add_argument("--ks", metavar="K,...", help="dictionary passes: active features per example to try "
                                                       "(default: 8,4,2)")
    refine.add_argument("--steps", type=int, help="dictionary passes: training steps (default: 1000)")
    refine.add_argument("--kind", choices=("topk", "batchtopk", "relu", "jumprelu"),
                        help="sae and transcoder passes: the encoder (default: topk; relu trains with an L1 penalty, "
                             "jumprelu with an L0 penalty, neither takes --ks)")
    refine.add_argument("--l0", type=float, metavar="C", help="jumprelu: the L0 penalty's coefficient (default: 1)")
    refine.add_argument("--beam", type=int, default=1, help="sequences kept at each step; 1 is greedy (default: 1)")
    refine.add_argument("--budget", type=int, default=500, help="the most models evaluated (default: 500)")
    refine.add_argument("--seed", type=int, default=0, help="seed of the passes' random numbers (default: 0)")
    refine.add_argument("--no-quantise", action="store_true", help="keep full-precision parameters")
    refine.add_argument("--plot", metavar="FILE", help="also draw the frontier to FILE (.png or .svg)")
    refine.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    refine.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    refine.add_argument("--json", action="store_true", help="print the result as JSON")
    _trust_code(refine)

    train = _command(commands, "train", _train,
                     "train a task's model, report its held-out accuracy, and save it with train.json",
                     "compinterp train digits --out runs/digits\n"
                     "  compinterp train modular --out runs/modular --epochs 2000 --json\n"
                     "  compinterp train gates --model chi --seed 1 --out runs/gates")
    train.add_argument("task", choices=TASK_NAMES, help="digits (sklearn's 8x8 digits), modular ((a + b) mod 113, "
                                                        "every pair), gates (boolean gates of noisy bits) or text "
                                                        "(next byte of Python's standard library)")
    train.add_argument("--out", metavar="DIR", required=True, help="the model directory to write")
    train.add_argument("--model", metavar="NAME",
                       help="which architecture: mlp (the default), chi (digits, gates) or transformer (modular; "
                            "text's only model)")
    train.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batch order (default: 0)")
    train.add_argument("--epochs", type=int, help="passes over the training split (default: the task's recipe)")
    train.add_argument("--device", default="cpu", help="torch device to train on, e.g. cpu or cuda (default: cpu)")
    train.add_argument("--input-noise", type=float, metavar="SIGMA",
                       help="add Gaussian noise of std SIGMA to the float inputs of every training step (token ids "
                            "untouched; refused for a model that reads only token ids; default: none)")
    train.add_argument("--weight-decay", type=float, metavar="W",
                       help="AdamW weight decay (default: the task's recipe)")
    train.add_argument("--json", action="store_true", help="print the run's numbers as JSON")

    imp = _command(commands, "import", _import,
                   "import a HuggingFace checkpoint directory (config.json + safetensors) as a compinterp model",
                   "compinterp import path/to/gpt2 --out runs/gpt2 --json")
    imp.add_argument("source", metavar="DIR", help="a directory written by a transformers model's save_pretrained")
    imp.add_argument("--out", metavar="MODEL_DIR", required=True, help="the compinterp model directory to write")
    imp.add_argument("--padding", action=argparse.BooleanOptionalAction, default=None,
                     help="whether attention reads a padding mask, an input wire keep:1 (default: encoders do, "
                          "decoders do not)")
    imp.add_argument("--json", action="store_true", help="print what was written as JSON")

    demo = _command(commands, "demo", _demo,
                    "train a digits model (or with 'lm' a language model), explain it, refine it, and write an HTML "
                    "report",
                    "compinterp demo --out runs/demo\n"
                    "  compinterp demo --out runs/demo --device cuda --json\n"
                    "  compinterp demo --out runs/demo --min-faithfulness 0.999 --budget 100\n"
                    "  compinterp demo lm --out runs/lm")
    demo.add_argument("which", nargs="?", choices=("digits", "lm"), default="digits",
                      help="digits (the default: a bilinear classifier) or lm (a byte-level transformer on Python's "
                           "standard library: induction heads, bilinear MLPs, a transcoder, a refinement)")
    demo.add_argument("--out", metavar="DIR",
                      help="where to write report.html, the models, results.json and figures (default: runs/demo, "
                           "or runs/lm); a model already trained there with the same settings is reused")
    demo.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the demo's model (default: 0)")
    demo.add_argument("--k", type=int, default=8, help="digits: eigenvectors per digit in the explanation (default: 8)")
    demo.add_argument("--min-faithfulness", type=float, default=0.99, metavar="F",
                      help="digits: the refinement's bar on end-to-end faithfulness (default: 0.99)")
    demo.add_argument("--budget", type=int, default=500, help="digits: the most models the refinement evaluates (default: 500)")
    demo.add_argument("--retrain", action="store_true", help="train a new model even if one is there")
    demo.add_argument("--json", action="store_true", help="print the demo's numbers (results.json) as JSON")
    _trust_code(demo)
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


def _trust_code(command: argparse.ArgumentParser) -> None:
    """Add ``--trust-code`` to a command that loads models."""
    command.add_argument("--trust-code", action="store_true",
                         help="let a model's opaque.pt (the pickled modules of its Opaque boxes) be unpickled, "
                              "which runs code stored in it: only for directories you trust (see docs/security.md)")


def _draw(args: argparse.Namespace) -> None:
    """``compinterp draw``: the diagram of a saved model, to a file."""
    from compinterp.drawing import draw
    from compinterp.files import read_diagram
    path = draw(read_diagram(args.model), args.output, kinds=not args.no_kinds, fontsize=args.fontsize)
    print(f"wrote {path}")


def _info(args: argparse.Namespace) -> None:
    """``compinterp info``: what a saved model holds, and its description length, as a table or JSON."""
    from compinterp.complexity import description_length
    from compinterp.files import info
    summary = info(args.model)
    summary["description_length"] = description_length(args.model).to_json()
    print(json.dumps(summary, indent=1) if args.json else _table(summary))


def _import(args: argparse.Namespace) -> None:
    """``compinterp import``: a HuggingFace checkpoint directory, read from its module tree, saved as our model."""
    from compinterp.frontend.hf import convert
    done = convert(args.source, args.out, padding=args.padding)
    if args.json:
        print(json.dumps(done, indent=1))
        return
    kinds = ", ".join(f"{n} {kind}" for kind, n in done["boxes"].items())
    inputs = " @ ".join(done["dom"])
    print(f"wrote {done['out']}: {done['model_type']} on {inputs}, {done['num_params']} parameters, "
          f"{done['recognised']:.1%} in recognised boxes ({kinds})")


def _check(args: argparse.Namespace) -> None:
    """``compinterp check``: the faithfulness report of an explanation or a second model."""
    from compinterp.data import resolve_device
    from compinterp.faithfulness import check
    from compinterp.interpretation import Interpretation
    from compinterp.interpretation.files import is_interpretation
    from compinterp.model import load
    device = resolve_device(args.device)
    model = load(args.model, trust_code=args.trust_code)
    other = Interpretation.load(args.explanation, model, trust_code=args.trust_code) \
        if is_interpretation(args.explanation) else load(args.explanation, trust_code=args.trust_code)
    data, fit = (None if spec is None else _data(spec, model) for spec in (args.data, args.fit))
    report = check(model, other, data, batch_size=args.batch_size, device=device, logits=args.logits,
                   progress=not args.json, fit=fit)
    print(json.dumps(report.to_json(), indent=1) if args.json else report)


def _data(spec: str, model: Any) -> Any:
    """The data a spec names (``exact`` as itself), made to fit ``model``'s input wires."""
    from compinterp.semantics import inputs
    from compinterp.tasks import data_from_spec
    return "exact" if spec == "exact" else data_from_spec(spec, inputs(model.plan))


def _refine(args: argparse.Namespace) -> None:
    """``compinterp refine``: search for a shorter faithful model on one split, check it on another, save it,
    print the result. The output paths are checked before the search."""
    from compinterp.data import resolve_device
    from compinterp.errors import InputError
    from compinterp.faithfulness import default_data
    from compinterp.files import check_target, save
    from compinterp.model import load
    from compinterp.refinement.dictionary import NAMES, make_pass
    from compinterp.refinement.search import refine, split_data
    device = resolve_device(args.device)
    check_target(args.out)
    if args.plot:
        from compinterp.drawing import figure_target
        figure_target(args.plot, "plot the frontier to")
    if args.holdout is not None and args.test_data is not None:
        raise InputError("give --holdout or --test-data, not both")
    model = load(args.model, trust_code=args.trust_code)
    data = default_data(model) if args.data is None else _data(args.data, model)
    test = None if args.test_data is None else _data(args.test_data, model)
    if isinstance(test, str):
        raise InputError("--test-data exact: exact needs no held-out data; give --data exact alone, or held-out data")
    search, test, note = split_data(data, 0.5 if args.holdout is None and test is None else args.holdout, test)
    names = None if args.passes is None else [name.strip() for name in args.passes.split(",") if name.strip()]
    if args.dictionary is not None:
        names = [*(names or []), args.dictionary]
    options = {"widths": _ints(args.widths, "--widths"), "ks": _ints(args.ks, "--ks"),
               "steps": None if args.steps is None else _ints(str(args.steps), "--steps")[0],
               "kind": args.kind, "l0": args.l0}
    if args.l0 is not None and (args.kind != "jumprelu" or not args.l0 > 0):
        raise InputError(f"--l0 is the positive L0 coefficient of --kind jumprelu, got --l0 {args.l0:g}"
                         + ("" if args.kind == "jumprelu" else f" with --kind {args.kind or 'topk (the default)'}"))
    if args.kind is not None and args.dictionary == "bilinear_ae" and args.passes is None:
        raise InputError("--kind sets the encoder of the sae and transcoder passes; bilinear_ae has its own")
    if not any(name in NAMES for name in names or []) and (args.wire is not None or any(options.values())):
        raise InputError("--wire, --widths, --ks, --steps, --kind and --l0 set the dictionary passes "
                         f"({', '.join(NAMES)}): name one with --pass or --passes")
    passes = None if names is None else [
        make_pass(name, search, None if args.wire is None else [args.wire], batch_size=args.batch_size,
                  device=device, progress=not args.json,
                  **{k: v for k, v in options.items() if v is not None and not (name == "bilinear_ae" and k in ENCODER)})
        if name in NAMES else name for name in names]
    result = refine(model, args.min_faithfulness, search, passes, budget=args.budget, beam=args.beam, seed=args.seed,
                    progress=not args.json, quantise=not args.no_quantise, batch_size=args.batch_size,
                    device=device, test_data=test, metric=args.metric)
    if args.test_data is None:                  # the split made here, not data given apart
        result = replace(result, held_out_note=note)
    path = save(result.model, args.out)
    if args.plot:
        result.frontier.plot(args.plot)
    if args.json:
        print(json.dumps(result.to_json() | {"out": str(path)}, indent=1))
    else:
        print(f"{result}\nwrote {path}" + (f" and {args.plot}" if args.plot else ""))


def _ints(text: str | None, option: str) -> list[int] | None:
    """A comma-separated list of positive integers (``--widths 64,32``), or ``None``."""
    from compinterp.errors import InputError
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise InputError(f"{option} takes positive integers separated by commas, got {text!r}")
    return values


def _train(args: argparse.Namespace) -> None:
    """``compinterp train``: train a task's model, save it and its numbers, print them."""
    from compinterp.data import resolve_device
    from compinterp.files import check_target
    from compinterp.tasks.train import get_task, train
    device = resolve_device(args.device)
    check_target(args.out)
    task = get_task(args.task)
    changes = {name: value for name, value in (("input_noise", args.input_noise), ("weight_decay", args.weight_decay))
               if value is not None}
    result = train(task, model=args.model, seed=args.seed, epochs=args.epochs, device=device, progress=not args.json,
                   recipe=replace(task.recipe(args.model), **changes))
    path = result.save(args.out)
    print(json.dumps(result.to_json() | {"out": str(path)}, indent=1) if args.json else f"{result}\nwrote {path}")


def _demo(args: argparse.Namespace) -> None:
    """``compinterp demo``: the whole pipeline on the digits, into a report."""
    from compinterp.data import resolve_device
    resolve_device(args.device)
    if args.which == "lm":
        from compinterp.demo_lm import run as run_lm
        result = run_lm(args.out or "runs/lm", device=args.device, seed=args.seed, retrain=args.retrain,
                        progress=not args.json, trust_code=args.trust_code)
    else:
        from compinterp.demo import run
        result = run(args.out or "runs/demo", device=args.device, seed=args.seed, k=args.k,
                     min_faithfulness=args.min_faithfulness, budget=args.budget, retrain=args.retrain,
                     progress=not args.json, trust_code=args.trust_code)
    print(json.dumps(result.numbers | {"report": str(result.report)}, indent=1) if args.json else result)


def _heads(box: dict[str, Any]) -> str:
    """One line of ``compinterp info`` on an Attention box's head structure."""
    data = box["data"]
    parts = [f"{data['heads']} heads x {data['head_dim']}"]
    if "kv_heads" in data:
        parts.append(f"{data['kv_heads']} key/value heads")
    if "rotary_dim" in data:
        parts.append(f"rotary on {data['rotary_dim']} of {data['head_dim']} (base {data['rotary_base']:g})")
    parts.append("causal" if data["causal"] else "bidirectional")
    parts += [f"window {data['window']}"] if "window" in data else []
    parts += [f"scale {data['scale']:.4g}"] if "scale" in data else []
    parts += ["padding mask"] if data.get("padded") else []
    return f"  {box['name']}: " + ", ".join(parts)


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
    lines.append("")
    heads = [_heads(box) for box in summary["boxes"] if box["kind"] == "Attention"]
    if heads:
        lines += ["heads", *heads, ""]
    lines.append(f"recognised: {summary['recognised']:.1%} of the parameters are in boxes that are not Opaque")
    lines += [f"tied: {key} is {value}" for key, value in summary["ties"].items()]
    lines.append("")
    bits = summary.get("description_length")
    if bits is not None:
        lines += [f"description length (numbers at {bits['precision']} bits unless quantised)",
                  f"  structure   {bits['structure']:>14,.1f} bits",
                  f"  parameters  {bits['parameters']:>14,.1f} bits",
                  f"  total       {bits['total']:>14,.1f} bits", *(f"  {note}" for note in bits["notes"]), ""]
    lines.append(f"{summary['num_params']:,} parameters in {len(summary['boxes'])} boxes")
    return "\n".join(lines)
