"""Methods and their ablations against floors, over seeds, on the semantic testbed.

Every variant is pretrained from scratch with the local recipe (conf/experiment/local.yaml:
150 steps, 8 images x 3 views of 64 px) on `data=testbed` (docs/testbed.md: 12 texture x hue
classes; designed and measured before any method was trained on it), then evaluated by the
eval job's own code (`vice.pipeline.evaluate_run`) on the same 256 val images: k-means at C =
12 (Hungarian) and over-clustering, the region metrics (nearest region of another image has
the same class; a linear probe on per-instance embeddings), and every floor (chance,
instance-random, instance-mean colour, raw colour, the random-init network and its layer2),
scored on the same images by the same code. A result counts as its margin over the strongest
floor. The upper bound is the same network trained with labels for the same budget.

    python bench/methods.py [--seeds 0,1,2] [--variants vice,grid,no_mask,mean_pool]
                            [--upper-bound] [--steps 150] [--out outputs/bench_methods]
                            [KEY=VALUE ...]

Variants (later methods join by name): vice, grid (SLIC -> grid cells), no_mask (regional
masking off), mean_pool (mean instead of representative-pixel pooling), init (the network of
`--init-weights`, no pretraining: "init only"), init_vice (ViCE from `--init-weights`),
maskcontrast (method=maskcontrast with the ground-truth foreground as its mask prior),
maskcontrast_sp (with the unsupervised superpixel-saliency prior), init_maskcontrast (gt
prior, from `--init-weights`, as published: MaskContrast starts from a pretrained trunk),
init_maskcontrast_pub_lr (the same with the published SGD lr 0.004, wd 1e-4, no warm-up),
init_maskcontrast_m96 (key-encoder momentum 0.96: the published EMA horizon relative to the
run length);
these also print MaskContrast's own protocol (mask k-means, saliency IoU) with floors,
slotcon (method=slotcon, its local-recipe keys from conf/tuning/local_slotcon.yaml; plus a
collapse check: prototypes in use, slots vs objects per image, `vice.eval.slots`);
vice_dc / vice_dp / vice_both and slotcon_dc / slotcon_dp / slotcon_both (the D3SSL
de-coupling and de-positioning switches at the follow-up's weight 0.3), vice_spgrid_cut /
_mean / _mix (SuperpixelGridCut / Mean / Mix on ViCE's views). The table has both probes of
the eval (position R2: positional bias; coupling: cosine with the surroundings replaced).

The methods table of the README:
    python bench/methods.py --variants vice,vice_dc,vice_dp,vice_both,vice_spgrid_cut,\
        vice_spgrid_mean,vice_spgrid_mix,slotcon,slotcon_dc,slotcon_dp,slotcon_both
Prints one table (mean +- sd over seeds), the paired differences of the ablations, and how
long each variant took. Runs are kept under --out, so a rerun only evaluates what is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from hydra import compose, initialize_config_dir

from vice.config import Config
from vice.hydra_schema import register, to_config
from vice.pipeline import evaluate_run, untrained_network
from vice.run_dir import RunDir
from vice.train.init_pretrain import save_trunk
from vice.train.supervised import train_supervised
from vice.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 12  # the testbed's
VARIANTS = {
    "vice": [],
    "grid": ["data.superpixels.method=grid"],
    "no_mask": ["data.masking.enabled=false"],
    "mean_pool": ["method.pooling=mean"],
    "init": None,  # the init file's network, not pretrained
    "init_vice": [],  # + model.init_weights
    "slotcon": ["method=slotcon"],  # conf/tuning/local_slotcon.yaml: the local recipe's keys
    # conf/tuning/local_maskcontrast.yaml: the testbed's ground-truth foreground as the prior
    "maskcontrast": ["method=maskcontrast"],
    # the unsupervised prior: superpixels merged into a salient region (vice.data.mask_priors)
    "maskcontrast_sp": ["method=maskcontrast", "data.mask_prior.source=superpixel_saliency"],
    "init_maskcontrast": ["method=maskcontrast"],  # + model.init_weights, as published
    # ... with the published optimizer instead of the local recipe's (SGD lr 0.05, warm-up):
    # added after init_maskcontrast collapsed, to tell the method from the recipe
    "init_maskcontrast_pub_lr": [
        "method=maskcontrast",
        "optim.lr=0.004",
        "optim.start_lr=0.004",
        "optim.warmup_iters=0",
        "optim.weight_decay=1e-4",
    ],
    # ... with the key encoder's EMA time constant scaled to the run: 0.999 averages over
    # ~1000 steps, 15 % of the published 6600 (40 VOC epochs of 64 images) but 6.7x this
    # 150-step run, so the keys stay the random head's. 0.96 keeps the published 15 %.
    # Added after init_maskcontrast collapsed.
    "init_maskcontrast_m96": ["method=maskcontrast", "method.momentum=0.96"],
    # D3SSL switches (methods.md section 4) at the follow-up's weight, on both region methods.
    "vice_dc": ["method.decoupling.weight=0.3"],
    "vice_dp": ["method.depositioning.weight=0.3"],
    "vice_both": ["method.decoupling.weight=0.3", "method.depositioning.weight=0.3"],
    "slotcon_dc": ["method=slotcon", "method.decoupling.weight=0.3"],
    "slotcon_dp": ["method=slotcon", "method.depositioning.weight=0.3"],
    "slotcon_both": [
        "method=slotcon",
        "method.decoupling.weight=0.3",
        "method.depositioning.weight=0.3",
    ],
    # SuperpixelGrid augmentations (methods.md section 5) on ViCE's views, the default r, q.
    "vice_spgrid_cut": ["data.views.superpixel_grid.kind=cut"],
    "vice_spgrid_mean": ["data.views.superpixel_grid.kind=mean"],
    "vice_spgrid_mix": ["data.views.superpixel_grid.kind=mix"],
}
# Variants scored by MaskContrast's mask k-means protocol with their own predicted masks, so
# their floors are scored with those masks too (every such variant scores its own floors).
MASKED = (
    "maskcontrast",
    "maskcontrast_sp",
    "init_maskcontrast",
    "init_maskcontrast_pub_lr",
    "init_maskcontrast_m96",
)
# Variants whose hard grouping is checked for collapse (vice.eval.slots), beside the metrics.
GROUPING = ("slotcon", "slotcon_dc", "slotcon_dp", "slotcon_both")
PAIRS = [
    ("vice", "grid", "SLIC - grid"),
    ("vice", "no_mask", "masking - none"),
    ("vice", "mean_pool", "representative - mean"),
    ("init_vice", "init", "init+ViCE - init"),
    ("vice_dc", "vice", "ViCE de-coupling - off"),
    ("vice_dp", "vice", "ViCE de-positioning - off"),
    ("vice_both", "vice", "ViCE both - off"),
    ("slotcon_dc", "slotcon", "SlotCon de-coupling - off"),
    ("slotcon_dp", "slotcon", "SlotCon de-positioning - off"),
    ("slotcon_both", "slotcon", "SlotCon both - off"),
    ("vice_spgrid_cut", "vice", "ViCE GridCut - off"),
    ("vice_spgrid_mean", "vice", "ViCE GridMean - off"),
    ("vice_spgrid_mix", "vice", "ViCE GridMix - off"),
]
FLOORS = [
    "chance",
    "instance_random",
    "instance_mean_colour",
    "raw_colour",
    "random_init",
    "random_init_layer2",
]
COLUMNS = [
    (f"clustering.{CLASSES}.miou", f"mIoU C={CLASSES}"),
    (f"clustering.{4 * CLASSES}.miou", f"mIoU C={4 * CLASSES}"),
    ("region.nn_same_class", "region NN"),
    ("region.probe_acc", "region probe"),
    ("probe.position_r2", "position R2"),  # positional bias: should fall with de-positioning
    ("probe.coupling", "coupling"),  # cosine with surroundings replaced: should rise with dc
]


def config(overrides: list[str]) -> Config:
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return to_config(compose("config", overrides))


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "experiment=local",
        "data=testbed",
        "tracking.enabled=false",
        f"data.testbed.eval_length={args.eval_images}",
        f"eval.max_images={args.eval_images}",
        f"eval.cluster_counts=[{CLASSES},{4 * CLASSES}]",
        "eval.linear=false",  # the region probe replaces the slow pixel probe here
        f"trainer.seed={seed}",
        *([f"trainer.max_steps={args.steps}"] if args.steps else []),
        *args.overrides,
    ]


def run_variant(name: str, seed: int, args: argparse.Namespace, floors: bool) -> dict:
    run_dir = Path(args.out) / f"seed{seed}" / name
    metrics_path = RunDir(run_dir).metrics
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    overrides = [*base_overrides(args, seed), f"eval.floors.enabled={str(floors).lower()}"]
    if name.startswith("init"):
        overrides.append(f"model.init_weights={Path(args.init_weights).resolve()}")
    cfg = config(overrides + (VARIANTS[name] or []))
    tic = time.monotonic()
    if VARIANTS[name] is None:  # not pretrained: the network as pretraining would start it
        RunDir(run_dir).path.mkdir(parents=True, exist_ok=True)
        metrics = evaluate_run(cfg, run_dir, model=untrained_network(cfg))
    else:
        if not RunDir(run_dir).final_weights.is_file():
            train(cfg, run_dir)
        metrics = evaluate_run(cfg, run_dir)
    if name in GROUPING:
        metrics.update(collapse_check(cfg, run_dir))
    metrics["bench.seconds"] = time.monotonic() - tic
    metrics_path.write_text(json.dumps(metrics, indent=1))
    return metrics


def collapse_check(cfg: Config, run_dir: Path) -> dict:
    """The trained method's hard grouping of the eval images against their objects
    (`vice.eval.slots.slot_usage`): prototypes in use, slots vs objects per image."""
    from vice.data.datasets import build_source
    from vice.eval.features import extract_features, load_eval_set_with_instances
    from vice.eval.slots import slot_usage
    from vice.methods import METHODS, build_method
    from vice.train.checkpoint import CheckpointManager

    loaded = CheckpointManager(
        RunDir(run_dir).checkpoints, cfg.trainer.keep_checkpoints
    ).load_latest()
    if loaded is None:
        return {}
    state, path = loaded
    method = build_method(cfg)
    method.load_state_dict(METHODS[cfg.method.name].current_checkpoint(state, str(path))["method"])
    method.eval()
    source = build_source(cfg.data, split=cfg.data.eval_split, labels=True)
    images, _, instances = load_eval_set_with_instances(
        source, cfg.eval.image_size, cfg.eval.max_images
    )
    if instances is None:
        return {}
    side = images.shape[1]

    class OneHot(torch.nn.Module):  # the hard grouping as extract_features wants it
        def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
            assign = method.assignments(x_BCHW)[:, None].float()
            assign = torch.nn.functional.interpolate(assign, size=(side, side), mode="nearest")
            hot = torch.nn.functional.one_hot(assign[:, 0].long(), cfg.method.num_prototypes)
            return hot.permute(0, 3, 1, 2).float()

    with torch.no_grad():
        assign = extract_features(
            OneHot(), images, cfg.data.views.mean, cfg.data.views.std, cfg.eval.batch_size
        ).argmax(dim=1)
    usage = slot_usage(assign.numpy(), instances, cfg.method.num_prototypes)
    return {f"collapse.{k}": float(v) for k, v in usage.items()}


def run_upper_bound(seed: int, args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / f"seed{seed}" / "supervised"
    metrics_path = RunDir(run_dir).metrics
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    cfg = config([*base_overrides(args, seed), "eval.floors.enabled=false"])
    tic = time.monotonic()
    network = untrained_network(cfg).train()
    train_supervised(cfg, network)
    save_trunk(network, RunDir(run_dir).final_weights)  # the whole network, for a look later
    metrics = evaluate_run(cfg, run_dir, model=network)
    metrics["bench.seconds"] = time.monotonic() - tic
    metrics_path.write_text(json.dumps(metrics, indent=1))
    return metrics


def print_mask_protocol(name: str, by_seed: dict[int, dict], seeds: list[int]) -> None:
    """MaskContrast's own evaluation of a variant, beside the floors scored with the same
    predicted masks: mask k-means mIoU (each seed's value a mean over 5 k-means seeds), and
    the saliency head's IoU with the ground-truth foreground."""
    key = "mask_kmeans.miou"
    rows = [(name, key)] + [(f"  floor: {f}", f"floors.{f}.{key}") for f in FLOORS]
    print(f"\nmask k-means mIoU, {name} (its predicted masks; mean ± sd over seeds, %):")
    for label, k in rows:
        vals = [by_seed[s][k] for s in seeds if isinstance(by_seed[s].get(k), float)]
        print(f"  {label}: {fmt(vals)}")
    margin = [by_seed[s]["margin.mask_kmeans.miou"] for s in seeds
              if "margin.mask_kmeans.miou" in by_seed[s]]  # fmt: skip
    print(f"  margin over the strongest floor: {fmt(margin)}")
    sal = [by_seed[s]["saliency.iou"] for s in seeds if "saliency.iou" in by_seed[s]]
    frac = [by_seed[s]["saliency.fg_fraction"] for s in seeds if "saliency.iou" in by_seed[s]]
    print(f"  saliency head IoU with the true foreground: {fmt(sal)} "
          f"(predicted foreground {fmt(frac)} of pixels)")  # fmt: skip


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="vice,grid,no_mask,mean_pool")
    p.add_argument("--upper-bound", action="store_true", help="train the labelled network too")
    p.add_argument("--init-weights", default=None, help="for init / init_vice")
    p.add_argument("--steps", type=int, default=None, help="default: the recipe's 150")
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--out", default="outputs/bench_methods")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if any(v.startswith("init") for v in variants) and not args.init_weights:
        p.error(
            "init / init_vice / init_maskcontrast need --init-weights "
            "(tools/make_init_weights.py --dataset testbed)"
        )
    torch.set_num_threads(max(1, torch.get_num_threads()))

    results: dict[str, dict[int, dict]] = {}
    # Variant by variant, so that an interrupted run has every seed of the first ones.
    for name in variants:
        for seed in seeds:
            # The floors depend on the seed (random vectors, the random-init network), not on
            # the variant: scored once per seed, with the first variant.
            floors = name == variants[0] or name in MASKED
            metrics = run_variant(name, seed, args, floors=floors)
            results.setdefault(name, {})[seed] = metrics
            print(f"[seed {seed}] {name}: {metrics['bench.seconds']:.0f} s", flush=True)
    if args.upper_bound:
        for seed in seeds:
            results.setdefault("supervised (upper bound)", {})[seed] = run_upper_bound(seed, args)
    first = variants[0]
    rows: list[tuple[str, list[list[float]]]] = []
    for floor in FLOORS:
        rows.append(
            (
                f"floor: {floor}",
                [
                    [
                        results[first][s][f"floors.{floor}.{key}"]
                        for s in seeds
                        if isinstance(results[first][s].get(f"floors.{floor}.{key}"), float)
                    ]
                    for key, _ in COLUMNS
                ],
            )
        )
    for name, by_seed in results.items():
        rows.append(
            (
                name,
                [[by_seed[s][key] for s in seeds if key in by_seed[s]] for key, _ in COLUMNS],
            )
        )
    header = ["row", *[label for _, label in COLUMNS], "margin C=12"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    key = COLUMNS[0][0]
    for name, cols in rows:
        margin = "-"
        if not name.startswith("floor") and name in results:
            best = [
                results[name][s][key]
                - max(
                    results[first][s][f"floors.{f}.{key}"]
                    for f in FLOORS
                    if isinstance(results[first][s].get(f"floors.{f}.{key}"), float)
                )
                for s in seeds
            ]
            margin = fmt(best)
        print("| " + " | ".join([name, *[fmt(c) for c in cols], margin]) + " |")
    print(f"\nmean ± sd over seeds {seeds}, %; margin: minus the strongest floor of that seed")
    for name in (v for v in variants if v in MASKED):
        print_mask_protocol(name, results[name], seeds)
    for name in (v for v in variants if v in GROUPING):
        cells = []
        for key in ("prototypes_used", "slots_per_image", "objects_per_image"):
            vals = [results[name][s][f"collapse.{key}"] for s in seeds]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{key} {statistics.mean(vals):.2f} ± {sd:.2f}")
        print(f"collapse check, {name}: " + "; ".join(cells))
    for a, b, label in PAIRS:
        if a in results and b in results:
            for col, col_label in COLUMNS[:1] + COLUMNS[2:3] + COLUMNS[4:]:
                if any(col not in results[x][s] for x in (a, b) for s in seeds):
                    continue  # a probe the eval did not run
                diffs = [100 * (results[a][s][col] - results[b][s][col]) for s in seeds]
                wins = sum(d > 0 for d in diffs)
                sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
                print(
                    f"{label} ({col_label}): {statistics.mean(diffs):+.2f} (sd {sd:.2f}), "
                    f"{wins} of {len(diffs)} seeds; per seed {[round(d, 2) for d in diffs]}"
                )


if __name__ == "__main__":
    main()
