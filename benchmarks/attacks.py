"""Attack speed: robustarch vs torchattacks 3.5.1 on the same model and batch (CIFAR ResNet-18 from
robustarch.zoo, batch 128, CPU float32).

Part 1 (one process, default allocator for both): images/s of FGSM, R-FGSM, StepLL, PGD-10, APGD-CE-10 and
Square-100 queries, robustarch (on ``prepare_for_attack``'s copy: BatchNorm folded, channels_last,
convolutions on 2x2 maps as dense linear maps; logits within 1e-5) vs torchattacks (on the model as
loaded), the ratio, and each one's ratio to its floor
(gradient steps x forward+backward to the input + one forward, timed on the model it attacks).

Part 2 (whole processes, so process-level settings count): PGD-10 through robustarch's own entry point
``python -m robustarch attacks bench`` (which tunes glibc's allocator and prepares the model) vs a plain
script calling ``torchattacks.PGD`` on ``robustarch.zoo.load``'s model. Same checkpoint, same seeded batch
(labelled with the model's own predictions, so every example starts correct and attacks that skip
misclassified examples do full work), same thread count, no random start so the two adversarial batches
can be compared (same numerics: the prepared model's logits are within 1e-5 of the original's; the share
of identical adversarial pixels is reported). The two processes alternate ``--rounds`` times; medians and
min-max spreads are printed.

    python benchmarks/attacks.py [--threads 2] [--repeats 3] [--rounds 3]   # prints markdown tables
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _machine import cpu_name  # benchmarks/_machine.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]

PLAIN_TORCHATTACKS = r"""
import json, sys, time, torch, torchattacks
from robustarch import zoo
ckpt, threads, batch, repeats, warmup, seed, steps, out, name, dataset, size = sys.argv[1:12]
threads, batch, repeats, warmup, seed, steps, size = (
    int(v) for v in (threads, batch, repeats, warmup, seed, steps, size)
)
torch.set_num_threads(threads)
model = zoo.load(name, dataset, weights=ckpt)
gen = torch.Generator().manual_seed(seed)
x = torch.rand(batch, 3, size, size, generator=gen)
with torch.no_grad():  # labels = the model's own predictions: every example starts correctly classified
    y = model(x).argmax(1)
atk = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=steps, random_start=False)
for _ in range(warmup):
    atk(x, y)
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    adv = atk(x, y)
    times.append(time.perf_counter() - t0)
torch.save(adv, out)
print(json.dumps({"impl": "torchattacks", "seconds": times, "threads": torch.get_num_threads()}))
"""


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def floor_fn(model, x, y, steps: int):
    import torch.nn.functional as F

    def run() -> None:
        for _ in range(steps):
            xx = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xx), y), xx)
        with torch.no_grad():
            model(x)

    return run


def part1(ckpt: str, threads: int, batch: int, repeats: int) -> list[dict]:
    import torchattacks

    import robustarch.attacks as ra
    from robustarch import zoo
    from robustarch.runtime import prepare_for_attack

    torch.set_num_threads(threads)
    model = zoo.load("resnet18", "cifar10", weights=ckpt)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    with torch.no_grad():  # labels = the model's predictions, so APGD/Square attack every example
        y = model(x).argmax(1)
    prepared, info = prepare_for_attack(model, x)
    eps = 8 / 255
    bim = torchattacks.BIM(model, eps=eps, alpha=1 / 255, steps=0)
    bim.set_mode_targeted_least_likely(quiet=True)
    cases = [
        ("fgsm", 1, ra.create("fgsm", eps=eps), torchattacks.FGSM(model, eps=eps)),
        ("rfgsm", 1, ra.create("rfgsm", eps=eps, alpha=eps / 2), torchattacks.RFGSM(model, eps, eps / 2, 1)),
        ("stepll (10 steps)", 10, ra.create("stepll", eps=eps, alpha=1 / 255), bim),
        (
            "pgd-10",
            10,
            ra.create("pgd", eps=eps, alpha=2 / 255, steps=10),
            torchattacks.PGD(model, eps=eps, alpha=2 / 255, steps=10),
        ),
        (
            "apgd-ce-10",
            11,
            ra.create("apgd-ce", eps=eps, steps=10),
            torchattacks.APGD(model, eps=eps, steps=10, seed=0),
        ),
        (
            "square-100 queries",
            0,
            ra.create("square", eps=eps, queries=100),
            torchattacks.Square(model, eps=eps, n_queries=100, seed=0),
        ),
    ]
    rows = []
    floors: dict[tuple[int, str], float] = {}
    for label, steps, ours, ref in cases:
        t_ours = timed(
            lambda ours=ours: ours(prepared, x, y, generator=torch.Generator().manual_seed(0)), repeats
        )
        t_ref = timed(lambda ref=ref: ref(x, y), repeats)
        row = {
            "attack": label,
            "ours": statistics.median(t_ours),
            "ref": statistics.median(t_ref),
            "ours_all": t_ours,
            "ref_all": t_ref,
        }
        if steps:
            for which, m in (("ours", prepared), ("ref", model)):
                if (steps, which) not in floors:
                    floors[(steps, which)] = statistics.median(timed(floor_fn(m, x, y, steps), repeats))
            row["floor_ours"], row["floor_ref"] = floors[(steps, "ours")], floors[(steps, "ref")]
        rows.append(row)
        print(
            f"  {label}: robustarch {batch / row['ours']:.2f} img/s, torchattacks {batch / row['ref']:.2f} "
            f"img/s (load {load_avg()})",
            file=sys.stderr,
        )
    rows.append({"prepared": info.as_dict()})
    return rows


def part2(
    ckpt: str, threads: int, batch: int, repeats: int, rounds: int, tmp: Path, model: str, dataset: str
) -> dict:
    from robustarch.zoo import dataset_shape

    size = dataset_shape(dataset).input_size
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    ours_cmd = [
        sys.executable,
        "-m",
        "robustarch",
        "attacks",
        "bench",
        "--model",
        model,
        "--dataset",
        dataset,
        "--weights",
        ckpt,
        "--attack",
        "pgd",
        "--steps",
        "10",
        "--eps",
        str(8 / 255),
        "--alpha",
        str(2 / 255),
        "--random-start",
        "false",
        "--param",
        "early_stop=false",  # the same work as torchattacks' PGD, so the batches can be compared
        "--batch-size",
        str(batch),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
        "--json",
        "--save-adv",
        str(tmp / "ours.pt"),
        "--floor",
    ]
    ref_cmd = [
        sys.executable,
        "-c",
        PLAIN_TORCHATTACKS,
        ckpt,
        str(threads),
        str(batch),
        str(repeats),
        "1",
        "0",
        "10",
        str(tmp / "ref.pt"),
        model,
        dataset,
        str(size),
    ]
    ours, ref, loads = [], [], []
    last_ours: dict = {}
    for _ in range(rounds):
        for cmd, sink in ((ours_cmd, ours), (ref_cmd, ref)):
            loads.append(os.getloadavg()[0])
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            data = json.loads(res.stdout.strip().splitlines()[-1])
            sink.extend(data["seconds"])
            if data["impl"] == "robustarch":
                last_ours = data
        print(
            f"  round: robustarch {batch / statistics.median(ours):.2f}, torchattacks "
            f"{batch / statistics.median(ref):.2f} img/s (load {load_avg()})",
            file=sys.stderr,
        )
    a, b = torch.load(tmp / "ours.pt"), torch.load(tmp / "ref.pt")
    return {
        "ours": ours,
        "ref": ref,
        "same_pixels": float((a == b).float().mean()),
        "max_abs_diff": float((a - b).abs().max()),
        "prepared": last_ours.get("prepared"),
        "allocator_tuned": last_ours.get("allocator_tuned"),
        "floor": last_ours.get("floor_seconds"),
        "load_min_max": (min(loads), max(loads)),
    }


def fmt(v: float) -> str:
    return f"{v:,.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating process pairs for part 2")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--model", default="resnet18", help="zoo model (part 2; part 1 is the CIFAR ResNet-18)")
    ap.add_argument("--dataset", default="cifar10", help="its dataset, e.g. imagenet for the ResNet-50")
    args = ap.parse_args()

    from robustarch import zoo

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        torch.manual_seed(0)
        net = zoo.build(args.model, args.dataset).eval()
        with torch.no_grad():  # non-trivial BatchNorm statistics so that folding changes the arithmetic
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
        meta = {"model": args.model, "dataset": args.dataset}
        ckpt = str(zoo.save_checkpoint(net, tmp / f"{args.model}.pt", meta))
        header = (
            f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; "
            f"threads {args.threads}; batch {args.batch_size}; float32; load average at start {load_avg()}"
        )
        print(header)
        if not args.skip_part1 and (args.model, args.dataset) != ("resnet18", "cifar10"):
            raise SystemExit("part 1 measures the CIFAR ResNet-18: add --skip-part1 for another model")
        if not args.skip_part1:
            rows = part1(ckpt, args.threads, args.batch_size, args.repeats)
            prep = rows.pop()["prepared"]
            print(f"\nPart 1: one process, default allocator; robustarch on the prepared model ({prep})")
            print(
                "| attack | robustarch img/s (min-max) | torchattacks img/s (min-max) | ratio | "
                "robustarch: floor / time | torchattacks: floor / time |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            b = args.batch_size
            for r in rows:
                fo = f"{r['floor_ours'] / r['ours']:.2f}" if "floor_ours" in r else "n/a"
                fr = f"{r['floor_ref'] / r['ref']:.2f}" if "floor_ref" in r else "n/a"
                spread_o = f"{b / max(r['ours_all']):.1f}-{b / min(r['ours_all']):.1f}"
                spread_r = f"{b / max(r['ref_all']):.1f}-{b / min(r['ref_all']):.1f}"
                print(
                    f"| {r['attack']} | {fmt(b / r['ours'])} ({spread_o}) | "
                    f"{fmt(b / r['ref'])} ({spread_r}) | "
                    f"{r['ref'] / r['ours']:.2f}x | {fo} | {fr} |"
                )
        res = part2(
            ckpt, args.threads, args.batch_size, args.repeats, args.rounds, tmp, args.model, args.dataset
        )
        b = args.batch_size
        o, r = statistics.median(res["ours"]), statistics.median(res["ref"])
        print(
            f"\nPart 2: PGD-10 as whole processes ({args.rounds} alternating rounds x {args.repeats} "
            f"timed runs; "
            f"1-min load average {res['load_min_max'][0]:.2f}-{res['load_min_max'][1]:.2f})"
        )
        print("| process | img/s median | min-max | floor img/s (same process) |")
        print("| --- | ---: | ---: | ---: |")
        print(
            f"| `python -m robustarch attacks bench` (allocator tuned: {res['allocator_tuned']}, prepared) | "
            f"{fmt(b / o)} | {fmt(b / max(res['ours']))}-{fmt(b / min(res['ours']))} | "
            f"{fmt(b / res['floor']) if res['floor'] else 'n/a'} |"
        )
        print(
            f"| plain script calling `torchattacks.PGD` | {fmt(b / r)} | {fmt(b / max(res['ref']))}-"
            f"{fmt(b / min(res['ref']))} | |"
        )
        print(
            f"\nSpeed-up robustarch / torchattacks (PGD-10, whole processes): {r / o:.2f}x "
            f"(worst pairing {min(res['ref']) / max(res['ours']):.2f}x, "
            f"best {max(res['ref']) / min(res['ours']):.2f}x)"
        )
        print(
            f"Numerics: prepared model {res['prepared']}; adversarial batches identical on "
            f"{100 * res['same_pixels']:.3f}% of pixels, max |diff| {res['max_abs_diff']:.3g} "
            f"(a sign flip of a near-zero gradient component moves a pixel by alpha)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
