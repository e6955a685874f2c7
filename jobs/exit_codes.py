"""Exit codes of a refused launch, one per class of mistake, so scripts around
`jobs/launch.py` can tell them apart (1 stays Hydra's own: an unknown key or a wrong type at
composition, and a failed job).

- 2, config: a value the schema, a range or the method refuses (`optim.lr=nan`,
  `+trainer.foo=1`, `method=slotcon data.masking.enabled=true`);
- 3, environment: paths, device, tracking store (an unwritable run directory,
  `trainer.device=cuda` without a GPU, an unsupported `tracking.uri` scheme);
- 4, data: a data set's layout, its eval split, what the loader computes per image (a
  missing `data.root`, a label map of another size than its image, missing saliency maps);
- 5, cluster: what SLURM would refuse (`trainer.nodes` past the partition, an unknown
  sbatch option in `cluster.additional`, a `cluster.constraint` no node has).
"""

from __future__ import annotations

CONFIG = 2
ENVIRONMENT = 3
DATA = 4
CLUSTER = 5

NAMES = {CONFIG: "config error", ENVIRONMENT: "environment error", DATA: "data error",
         CLUSTER: "preflight error"}  # fmt: skip
