"""Where a CoTracker3 forward spends its time: by module and by op, ours or the official network.

Module times (wall time on a GPU, the process's CPU time on a CPU: see ``tracker_common.clock``) come
from forward hooks (synchronised on CUDA) around the parts both networks share by
name: the frame encoder ``fnet``, the correlation MLP ``corr_mlp`` and the transformer ``updateformer``;
the rest of the forward (correlation sampling, motion encoding, glue) is reported as "other". Op
times come from ``torch.profiler`` (self wall time, so their shares hold only on a quiet machine;
CUDA kernel time on a GPU).

    python benchmarks/tracker_profile.py --batch 1            # ours, 16 frames, 384x512, grid 15
    python benchmarks/tracker_profile.py --batch 1 --official # the official network, same input
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from tracker_common import GRID_SIZE, ITERS, RESOLUTION, clock, device_name, official_predictor, random_state, synchronize

from magma_data.models.cotracker3 import CoTracker3Offline

PARTS = ("fnet", "corr_mlp", "updateformer")


def module_seconds(network: torch.nn.Module, run, device: torch.device) -> tuple[dict[str, float], float]:
    """Seconds (:func:`clock`) in each of PARTS during ``run()``, and the whole run's seconds."""
    now = clock(device)
    spent: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    handles = []
    for name in PARTS:
        module = getattr(network, name)

        def before(_module, _inputs, name=name):
            synchronize(device)
            started[name] = now()

        def after(_module, _inputs, _output, name=name):
            synchronize(device)
            spent[name] += now() - started[name]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    synchronize(device)
    start = now()
    run()
    synchronize(device)
    total = now() - start
    for handle in handles:
        handle.remove()
    return dict(spent), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="windows (the official network: one at a time)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=GRID_SIZE)
    parser.add_argument("--official", action="store_true", help="profile the official network instead of ours")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--ops", type=int, default=15, help="rows of the op table")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    height, width = RESOLUTION
    state = random_state("offline")
    if args.official:
        network = official_predictor(state, "offline").model.to(device)
    else:
        network = CoTracker3Offline()
        network.load_state_dict(state, strict=True)
        network = network.eval().to(device)
    torch.manual_seed(0)
    video = torch.randint(0, 256, (args.batch, args.frames, 3, height, width), device=device).float()
    ys, xs = torch.meshgrid(torch.linspace(8, height - 8, args.grid), torch.linspace(8, width - 8, args.grid), indexing="ij")
    queries = torch.stack([torch.zeros_like(xs), xs, ys], -1).reshape(1, -1, 3).expand(args.batch, -1, -1).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def run():
        with torch.no_grad(), autocast:
            if args.official:  # the reference fails for batch > 1
                for i in range(args.batch):
                    network(video[i : i + 1], queries[i : i + 1], iters=ITERS)
            else:
                network(video, queries, iters=ITERS)

    run()  # warm-up: kernel selection and primitive caches
    spent, total = module_seconds(network, run, device)
    name = "official" if args.official else "ours"
    seconds_kind = "wall seconds" if device.type == "cuda" else "CPU seconds of the process"
    print(f"{name}, {device_name(device)}, {args.precision}, batch {args.batch} x {args.frames} frames, "
          f"{args.grid ** 2} points, {height}x{width}, {ITERS} iterations: {total:.2f} {seconds_kind}")
    print("\n| part | s | share |\n|---|---:|---:|")
    for part, seconds in [*spent.items(), ("other (correlation sampling, motion encoding, glue)", total - sum(spent.values()))]:
        print(f"| {part} | {seconds:.2f} | {100 * seconds / total:.0f} % |")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    whole = sum(getattr(e, key) for e in events)
    print("\n| op | self s | share | calls |\n|---|---:|---:|---:|")
    for event in events[: args.ops]:
        seconds = getattr(event, key) / 1e6
        print(f"| {event.key} | {seconds:.2f} | {100 * getattr(event, key) / whole:.0f} % | {event.count} |")


if __name__ == "__main__":
    main()
