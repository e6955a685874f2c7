"""The main job.

    python jobs/launch.py                     # local, synthetic data (the embedded default)
    python jobs/launch.py data=coco data.root=/data/coco

At this stage of the roadmap the job validates the configuration, writes the resolved
config into a fresh run directory and renders the ViCE views of `figure.indices` there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vice.hydra_schema import register, to_config

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    try:
        config = to_config(cfg)
    except ValueError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))

    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset
    from vice.viz.views_figure import render_views_figure

    source = build_source(config.data)
    ds = ViceDataset(source, config.data, keep_debug=True)
    written = []
    for index in config.figure.indices:
        if index >= len(source):
            print(
                f"config error: figure.indices has {index} but the data set has "
                f"{len(source)} images",
                file=sys.stderr,
            )
            raise SystemExit(2)
        item = ds[(config.figure.epoch, index)]
        img, ids = ds.prepare(item["index"])
        fig = render_views_figure(
            img,
            ids,
            item["sample"],
            config.data.views.mean,
            config.data.views.std,
            title=f"{config.data.dataset} {source.key(item['index'])}",
        )
        out = run_dir / f"views_{index}.png"
        fig.save(out)
        written.append(out)
    for out in written:
        print(f"views figure: {out}")
    print(f"run_dir: {run_dir}")
    return str(run_dir)


if __name__ == "__main__":
    main()
