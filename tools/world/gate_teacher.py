"""The world models' quality gate: samples must score >= --gate on every caption attribute with the world
classifier (issue 11). Prints a markdown table, writes --out JSON; exit 0 when the gate holds, 1 when not.
The dense teacher is gated with dense attention; a sparse student with the sparse attention it serves with
(--topk/--topp/--token-order, the settings it was distilled under).

    python tools/world/gate_teacher.py --model runs/world-teacher/export [--classifier <folder>] [--count 128]
    python tools/world/gate_teacher.py --model runs/world-distill/export --topk 0.03 --topp 0.2 --token-order tiled
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sample_quality import SampleSet, generate_with_sparge, quality  # noqa: E402

from sparge_pipelines import SpargeConfig  # noqa: E402
from sparge_pipelines.world import WorldSize  # noqa: E402
from sparge_pipelines.world.classifier import load_classifier  # noqa: E402
from sparge_pipelines.world.model import load_world_transformer  # noqa: E402
from sparge_pipelines.world.sampler import SamplerConfig  # noqa: E402

ATTRIBUTES = ("colour", "digit", "direction", "background")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--classifier", default=None, help="default: the shipped classifier")
    p.add_argument("--count", type=int, default=128)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--gate", type=float, default=0.9)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--topk", type=float, default=0.0, help="with --topp: sample with sparse attention (0, 0: dense)")
    p.add_argument("--topp", type=float, default=0.0)
    p.add_argument("--token-order", choices=("1d", "tiled"), default="1d")
    args = p.parse_args()
    if args.count < 2:
        p.error(f"--count: must be >= 2 (KID and the Frechet distance compare sets of videos), got {args.count}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_world_transformer(args.model, device=device, dtype=dtype)
    classifier = load_classifier(args.classifier, device=device)
    samples = SampleSet(WorldSize(args.frames, args.size, args.size), args.count, device,
                        SamplerConfig(steps=args.steps, guidance=args.guidance))
    sparse = args.topk > 0 or args.topp > 0
    config = SpargeConfig(topk=args.topk, topp=args.topp, token_order=args.token_order,
                          collect_stats=True) if sparse else None  # topk = topp = 0 is no SpargeConfig
    videos, state = generate_with_sparge(samples, model, config)
    generated = quality(classifier, samples, videos)
    if sparse:
        generated["density"] = state.stats.summary()["overall"]
        generated["sparse"] = {"topk": args.topk, "topp": args.topp, "token_order": args.token_order}
    real = quality(classifier, samples, samples.real)
    passed = all(generated["accuracy"][a] >= args.gate for a in ATTRIBUTES)
    print(f"| videos ({args.count}, {args.frames}x{args.size}x{args.size}) | " + " | ".join(ATTRIBUTES)
          + " | all | KID | Frechet |")
    print("|---|" + "---:|" * (len(ATTRIBUTES) + 3))
    for name, q in (("teacher samples", generated), ("real held-out", real)):
        acc = q["accuracy"]
        print(f"| {name} | " + " | ".join(f"{acc[a]:.3f}" for a in ATTRIBUTES)
              + f" | {acc['all']:.3f} | {q['kid']:.4f} | {q['frechet']:.2f} |")
    if sparse:
        print(f"sparse attention {generated['sparse']}: achieved density {generated['density']:.3f}")
    print(f"gate (every attribute >= {args.gate}): {'PASSED' if passed else 'FAILED'}")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "gate": args.gate, "passed": passed,
                                        "generated": generated, "real": real}, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
