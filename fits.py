"""
What fits where: the README's table of s1's run (global batch 16, micro-batch 1, bf16, checkpointing) for
every Qwen2.5 size on 1, 8 and 16 GPUs of 24, 40, 80 and 141 GB, at blocks of 32768 and 20000 tokens, with
the offload that train.py's `--offload auto` would pick on each card and the pinned host memory it needs.
Every number is memory.py's estimate (fake tensors, no GPU), not a measurement.

    python fits.py --out docs/fits.json                # 11-20 s an estimate on 2 busy cores; a rerun continues
    python fits.py --out fits.json --sizes 0.5B,1.5B --worlds 8 --blocks 32768

What it leaves out: micro-batches above 1, --defer-grad-sync, --compile (estimated as eager), more than
one node's host memory (a node holds up to 8 GPUs).
"""

import argparse
import json
import os
import sys

from memory import GB, OFFLOADS, estimate, fits, pick
from model import atomic_write, dump_json, load_config

SIZES = ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
WORLDS = (1, 8, 16)
CARDS = (24, 40, 80, 141)  # GB
BLOCKS = (32768, 20000)
SHORT = {"none": "none", "activations": "act", "optimizer": "opt", "optimizer+activations": "opt+act"}
# config.json of every size, no weights: the team's shared data, beside the repository
CONFIGS = os.path.join(os.environ.get("S1_SHARED_DATA") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "..", "shared", "data"), "qwen2.5-configs")


def table(path: str, sizes=SIZES, worlds=WORLDS, blocks=BLOCKS, say=print) -> dict:
    """
    {"SIZE WORLD BLOCK OFFLOAD": estimate} for every size, GPU count and block, each offload choice in
    auto's order until one fits the smallest card (auto would pick none of the later ones on any card).
    Saved to `path` after each estimate, so that a rerun continues where it stopped.
    """
    done = json.load(open(path)) if os.path.isfile(path) else {}
    for size in sizes:
        config = load_config(os.path.join(CONFIGS, f"Qwen2.5-{size}-Instruct"))
        for world in worlds:
            for block in blocks:
                for offload in OFFLOADS:
                    key = f"{size} {world} {block} {offload}"
                    if key not in done:
                        done[key] = estimate(config, world, block, accum=max(1, 16 // world), offload=offload)
                        atomic_write(path, lambda p: dump_json(done, p))
                        say(f"{key}: {done[key]['gpu'] / GB:.1f} GB per GPU, host {done[key]['host'] / GB:.1f} GB "
                            f"({done[key]['seconds']:.0f}s, {done[key]['cpu_seconds']:.0f}s of CPU)", flush=True)
                    if fits(done[key]["gpu"], min(CARDS)):
                        break
    return done


def markdown(done: dict, block: int) -> str:
    """One row per size and GPU count: the peak of each choice (· where not estimated), the host memory a
    node needs for each, and auto's pick on each card (? while a table is unfinished)."""
    lines = ["| model | GPUs | peak per GPU, GB: none / act / opt / opt+act | pinned host RAM per node, GB: act / "
             "opt / opt+act | " + " | ".join(f"{c} GB" for c in CARDS) + " |", "|---" * (4 + len(CARDS)) + "|"]
    for size in sorted({k.split()[0] for k in done}, key=lambda s: float(s[:-1])):
        for world in sorted({int(k.split()[1]) for k in done if k.startswith(size + " ")}):
            got = {o: done.get(f"{size} {world} {block} {o}") for o in OFFLOADS}
            if not any(got.values()):
                continue
            peaks = " / ".join(f"{e['gpu'] / GB:.1f}" if e else "·" for e in got.values())
            host = " / ".join(f"{e['host'] * min(world, 8) / GB:.0f}" if e else "·" for o, e in got.items()
                              if o != "none")
            # a card where no estimated choice fits: nothing does, or the rest are still to estimate
            rest = "does not fit" if all(got.values()) else "?"
            cells = [SHORT.get(pick({o: e for o, e in got.items() if e}, card), rest) for card in CARDS]
            lines.append(f"| {size} | {world} | {peaks} | {host} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def positive_ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        fail(f"{flag} {text}: give positive whole numbers separated by commas, such as 1,8,16")
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description="the README's table of what fits where (memory.py's estimates)")
    p.add_argument("--out", default="fits.json", help="the estimates so far, read and extended")
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--worlds", default=",".join(map(str, WORLDS)))
    p.add_argument("--blocks", default=",".join(map(str, BLOCKS)))
    args = p.parse_args(argv)
    sizes = args.sizes.split(",")
    worlds, blocks = positive_ints("--worlds", args.worlds), positive_ints("--blocks", args.blocks)
    if set(sizes) - set(SIZES):
        fail(f"--sizes {args.sizes}: the sizes are {','.join(SIZES)}")
    if os.path.isfile(args.out):
        try:
            json.load(open(args.out))
        except ValueError:
            fail(f"--out {args.out}: not a JSON file of estimates; give a new path or fits.py's own output")
    done = table(args.out, sizes, worlds, blocks)
    for block in blocks:
        print(f"\nblock {block}:\n\n" + markdown(done, block))


if __name__ == "__main__":
    main()
