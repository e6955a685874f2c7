"""Make a `model.init_weights` file: a trunk pretrained with image-level labels.

The paper's networks start from ImageNet weights; nothing is downloaded here, so this trains a
trunk on the synthetic data set's "init" split (disjoint from pretraining and evaluation) to
predict which classes each image contains, and saves it in torchvision format.

./dev python tools/make_init_weights.py --out init/r18_os16.pt
./dev launch model.init_weights=init/r18_os16.pt        # "init + ViCE"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vice.config import DataConfig
from vice.data.datasets import build_source
from vice.train.init_pretrain import InitRecipe, pretrain_image_level, save_trunk


def main(argv: list[str] | None = None) -> int:
    defaults = InitRecipe()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="where to write the state dict (.pt)")
    p.add_argument("--dataset", default="synthetic", help="a data set with an 'init' split")
    p.add_argument("--data-seed", type=int, default=0, help="data.seed of the runs it serves")
    p.add_argument("--num-classes", type=int, default=None, help="data.synthetic.num_classes")
    for name in ("backbone", "output_stride", "images", "size", "steps", "batch_size"):
        value = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    recipe = InitRecipe(
        backbone=args.backbone,
        output_stride=args.output_stride,
        images=args.images,
        size=args.size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    data = DataConfig(dataset=args.dataset, seed=args.data_seed)
    data.synthetic.length = data.testbed.length = recipe.images
    if args.num_classes:
        data.synthetic.num_classes = args.num_classes
    try:
        source = build_source(data, split="init", labels=True)
    except ValueError as err:
        print(f"error: {err} (--dataset {args.dataset} needs an 'init' split)", file=sys.stderr)
        return 2
    tic = time.monotonic()
    trunk, losses = pretrain_image_level(source, recipe)
    path = save_trunk(trunk, args.out)
    print(
        f"wrote {path} ({recipe.backbone}, output stride {recipe.output_stride}) after "
        f"{recipe.steps} steps in {time.monotonic() - tic:.0f} s; bce {losses[0]:.3f} -> "
        f"{sum(losses[-20:]) / len(losses[-20:]):.3f}. Use: model.init_weights={path} "
        f"model.backbone={recipe.backbone} model.output_stride={recipe.output_stride}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
