"""Render what ViCE's sampling makes of one image into a PNG.

python tools/show_views.py --dataset synthetic --index 0 --out views.png
python tools/show_views.py --dataset coco --root /data/coco --index 12 --out v.png
python tools/show_views.py --region --out views.png   # + views_region.png: the D3SSL inputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vice.config import DataConfig
from vice.data.datasets import DATASETS, build_source
from vice.data.pretrain import ViceDataset
from vice.viz.region_figure import region_figure_of
from vice.viz.views_figure import render_views_figure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DataConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="synthetic", choices=sorted(DATASETS))
    p.add_argument("--root", default=None, help="data set directory (not for synthetic)")
    p.add_argument("--split", default=None, help="split name (default: the data set's own)")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default="views.png")
    p.add_argument("--short-side", type=int, default=d.views.short_side)
    p.add_argument("--view-size", type=int, default=d.views.view_size)
    p.add_argument("--num-views", type=int, default=d.views.num_views)
    p.add_argument("--region-size", type=int, default=d.superpixels.region_size)
    p.add_argument("--grid", action="store_true", help="regular grid instead of SLIC")
    p.add_argument("--no-mask", action="store_true", help="disable regional masking")
    p.add_argument(
        "--region", action="store_true",
        help="also render the D3SSL inputs (cut-out, small copy, paste) to <out>_region.png",
    )  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    cfg = DataConfig(dataset=args.dataset, root=args.root, seed=args.seed)
    if args.split:
        cfg.split = args.split
    elif args.dataset == "coco":
        cfg.split = "train+unlabeled"
    elif args.dataset == "cityscapes":
        cfg.split = "all"
    cfg.views.short_side = args.short_side
    cfg.views.view_size = args.view_size
    cfg.views.num_views = args.num_views
    cfg.superpixels.region_size = args.region_size
    cfg.superpixels.method = "grid" if args.grid else "slic"
    cfg.masking.enabled = not args.no_mask
    cfg.synthetic.size = args.short_side  # render procedurally at the standard size
    cfg.validate()
    source = build_source(cfg)
    if not 0 <= args.index < len(source):
        raise SystemExit(f"--index {args.index} outside the data set (0..{len(source) - 1})")
    region_views = (1, min(2, cfg.views.num_views - 1)) if args.region else None  # ViceMethod's
    ds = ViceDataset(source, cfg, keep_debug=True, region_views=region_views)
    item = ds[(args.epoch, args.index)]
    img, ids = ds.prepare(item["index"])
    title = (
        f"{args.dataset} {source.key(item['index'])}  epoch {args.epoch}  seed {args.seed}  "
        f"{img.shape[1]}x{img.shape[0]} px, {ids.max() + 1} superpixels ({cfg.superpixels.method}"
        f", {args.region_size} px)"
    )
    fig = render_views_figure(img, ids, item["sample"], cfg.views.mean, cfg.views.std, title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(out)
    print(f"wrote {out} ({fig.width}x{fig.height})")
    if args.region:
        region_out = out.with_name(f"{out.stem}_region{out.suffix}")
        region_figure_of(item["sample"], cfg.views.mean, cfg.views.std).save(region_out)
        print(f"wrote {region_out}")
    return out


if __name__ == "__main__":
    main()
