"""Where a sparse model's velocity error sits under classifier-free guidance, against the dense teacher.

On held-out (x_σ, σ, caption) inputs (the ablation's probe sets) it prints, per σ, the relative squared error
‖v − v_T‖² / ‖v_T‖² of the captioned velocity v(c), the null-caption velocity v(∅), their difference
v(c) − v(∅) (what the caption adds), and the guided velocity v(∅) + w·(v(c) − v(∅)) the sampler steps with;
plus ‖v_T(c) − v_T(∅)‖ / ‖v_T(c)‖, how much of the velocity the caption moves. Rows: the teacher under the
sparse attention (training-free) and each --model under it. CPU-friendly (reference ops) at small sizes.

    python tools/world/guidance_error.py --model .carry/student-init --size 16x64x64 --batch 4 \\
        --topk 0.03 --topp 0.14 --token-order tiled [--out tools/results/world/x.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ablation import SIGMAS, Probe, rel_mse  # noqa: E402

from sparge_pipelines import apply_sparge, remove_sparge  # noqa: E402
from sparge_pipelines.world import WorldSize  # noqa: E402
from sparge_pipelines.world.model import load_world_transformer  # noqa: E402
from sparge_train.losses import guided_velocity  # noqa: E402  (the guided velocity loss.guidance_scale trains)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="a sparse model folder (repeatable)")
    p.add_argument("--teacher", default="teacher")
    p.add_argument("--size", default="16x64x64", help="FRAMESxHEIGHTxWIDTH")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=1, help="probe set (the ablation's seeds 0-2)")
    p.add_argument("--guidance", type=float, default=4.0, help="the sampler's CFG scale")
    p.add_argument("--topk", type=float, default=0.03)
    p.add_argument("--topp", type=float, default=0.14)
    p.add_argument("--token-order", default="tiled")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args()
    frames, height, width = (int(x) for x in args.size.split("x"))
    teacher = load_world_transformer(args.teacher, device=args.device)
    probe = Probe(teacher, WorldSize(frames, height, width), args.batch, args.device, seed=args.seed)
    null = torch.zeros_like(probe.text)
    models = [("teacher, training-free sparse", teacher)] + [(m, load_world_transformer(m, device=args.device))
                                                             for m in args.model]
    w = args.guidance
    lines = [f"Sparse attention topk={args.topk} topp={args.topp} order={args.token_order}; {args.size}, "
             f"{args.batch} held-out videos (seed {args.seed}), CFG w={w}. Relative squared error vs the dense "
             "teacher.", "",
             "| σ | model | caption share ‖Δv_T‖/‖v_T(c)‖ | v(c) | v(∅) | Δv = v(c) − v(∅) | guided v(∅) + w·Δv |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for sigma in SIGMAS:
        tc, tu = probe.teacher_v[sigma], probe.velocity(teacher, sigma, null)
        share = float((tc - tu).norm() / tc.norm())
        for name, model in models:
            apply_sparge(model, topk=args.topk, topp=args.topp, token_order=args.token_order)
            try:
                sc, su = probe.velocity(model, sigma), probe.velocity(model, sigma, null)
            finally:
                remove_sparge(model)
            guided = rel_mse(guided_velocity(sc, su, w), guided_velocity(tc, tu, w))
            lines.append(f"| {sigma} | {name} | {share:.3f} | {rel_mse(sc, tc):.4f} | {rel_mse(su, tu):.4f} | "
                         f"{rel_mse(sc - su, tc - tu):.3f} | {guided:.4f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
