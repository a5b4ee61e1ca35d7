"""Train the sparge world's video classifier (issue 11, section 3) and write its weights and accuracy report.

CPU (one thread, as on the shared CI machine) or GPU:

    python tools/world/train_classifier.py --steps 700 --batch 32 --device cpu --threads 1
    python tools/world/train_classifier.py --steps 3000 --batch 64 --device cuda

Writes classifier.safetensors + classifier.json into --out (default: the shipped folder
sparge_pipelines/world/weights/classifier/) and a markdown + JSON report (held-out caption accuracy per attribute,
base and shifted splits, every training size) to --report (default tools/results/world_classifier_<date>.md/.json).
Exits 1 (writing the report but no weights into the shipped folder) when an attribute is below --gate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from sparge_pipelines.world import WorldSize
from sparge_pipelines.world.classifier import (
    ATTRIBUTES,
    CLASSIFIER_DIR,
    DEFAULT_SIZES,
    save_classifier,
    train_classifier,
)

GATED = ("colour", "digit", "direction", "background")


def parse_size(text: str) -> WorldSize:
    try:
        f, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FxHxW such as 16x96x96, got {text!r}") from None
    return WorldSize(f, h, w)


def markdown(report: dict) -> str:
    t = report["training"]
    lines = [f"# World classifier, {report['date']}", "",
             f"`{report['command']}`", "",
             f"{report['params']} parameters, {report['weights_bytes']} bytes of {report['dtype']} weights"
             f"{'' if report['weights'] else ' (not written)'}; "
             f"{t['steps']} steps x batch {t['batch']} (half base, half shifted; sizes "
             f"{', '.join('x'.join(map(str, s)) for s in t['sizes'])} in turn) in {t['train_seconds']} s on "
             f"{t['device']} ({t['threads']} threads). Held-out caption accuracy on real world videos "
             f"({report['eval_count']} per row: base = the heldout split, shifted = shifted indices >= 2^23, never "
             "drawn in training); colour = the caption's colour set exactly, digit/direction per object, "
             "all = every attribute of the caption right.", "",
             "| split/size | " + " | ".join(ATTRIBUTES) + " |", "|---|" + "---:|" * len(ATTRIBUTES)]
    for key, acc in t["heldout"].items():
        lines.append(f"| {key} | " + " | ".join(f"{100 * acc[k]:.1f}%" for k in ATTRIBUTES) + " |")
    lines += ["", f"Gate: every attribute >= {100 * report['gate']:.0f}% on every row: "
              f"**{'passed' if report['passed'] else 'failed'}** (lowest {100 * report['lowest']:.1f}%)."]
    if report.get("note"):
        lines += ["", report["note"]]
    if report["weights"]:
        lines.append(f"Weights: `{report['weights']}`.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--eval-count", type=int, default=1024, help="held-out videos per split and size")
    p.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--gate", type=float, default=0.97, help="lowest per-attribute accuracy for shipping")
    p.add_argument("--out", type=Path, default=CLASSIFIER_DIR)
    p.add_argument("--report", type=Path, default=None, help="report path without suffix")
    p.add_argument("--note", default="", help="a paragraph for the report (machine, load)")
    args = p.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads: must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.eval_count < 1:
        p.error(f"--eval-count: must be >= 1, got {args.eval_count}")
    extra = {} if args.lr is None else {"lr": args.lr}
    model = train_classifier(args.steps, args.batch, args.device, args.seed, sizes=args.sizes,
                             eval_count=args.eval_count, time_budget_s=args.time_budget, **extra)
    heldout = model.config.training["heldout"]
    lowest = min(acc[k] for acc in heldout.values() for k in GATED)
    passed = lowest >= args.gate
    date = datetime.date.today().isoformat()
    stem = args.report or Path(__file__).resolve().parents[1] / "results" / f"world_classifier_{date}"
    shipped = args.out.resolve() == CLASSIFIER_DIR.resolve()
    weights = None
    if passed or not shipped:
        weights = save_classifier(model, args.out)
    dtype = "float16"
    params = sum(v.numel() for v in model.state_dict().values())
    report = dict(date=date, command="python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                  params=sum(p.numel() for p in model.parameters()), dtype=dtype,
                  weights_bytes=(weights / "classifier.safetensors").stat().st_size if weights else params * 2,
                  note=args.note,
                  eval_count=args.eval_count, gate=args.gate, lowest=lowest, passed=passed,
                  weights=str(weights) if weights else None, training=model.config.training)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if not passed:
        print(f"gate failed: lowest attribute accuracy {lowest:.3f} < {args.gate}"
              + ("; the shipped weights were not written" if shipped else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
