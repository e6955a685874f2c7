"""Every method beside ViCE through the whole `-m` path on the real local cluster
(tools/slurm_cluster.py up --nodes 2): 2 nodes, the chained eval, and a preemption.

Per method, two chains on 2 nodes x 1 process: an undisturbed reference (no eval), and a run
preempted once by a job of the `urgent` partition mid-run, requeued, resumed and evaluated.
The preempted run must end like the reference: final weights bit-identical, the MLflow
history of the loss, each logged term and the learning rate equal step for step, the
chained eval run once. SlotCon runs with both D3SSL switches on (method.decoupling,
method.depositioning). (ViCE's own scenarios, with more kinds of stops, are in
test_preemption.py.)
"""

from __future__ import annotations

import json

import pytest

from .test_preemption import Run, check_completed_like_reference, preempt

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STEPS = 12


def base(*recipe: str) -> tuple[str, ...]:
    return (
        *recipe,
        f"trainer.max_steps={STEPS}",
        "trainer.log_every=1",
        "trainer.checkpoint_every=3",
        "trainer.nodes=2",
        "trainer.gpus_per_node=1",
        "eval.linear_iters=20",
        "eval.max_images=4",
        "launch.wait=false",
    )


# method -> (its smoke recipe, the logged terms compared step by step)
METHODS = {
    # with both D3SSL switches on: their inputs (partner images included) are pure functions
    # of the sample's key, so the resumed run sees the same ones
    "slotcon": (
        base(
            "experiment=slotcon_smoke",
            "method.decoupling.weight=0.3",
            "method.depositioning.weight=0.3",
        ),
        (
            "loss",
            "loss_group",
            "loss_slot",
            "loss_decoupling",
            "loss_depositioning",
            "active_prototypes",
            "teacher_momentum",
            "lr",
        ),
    ),
    # dropout and the shuffled-BN permutation draw from the resumed RNG state and the step
    "maskcontrast": (
        base("experiment=maskcontrast_smoke"),
        ("loss", "loss_contrast", "loss_saliency", "fg_fraction", "lr"),
    ),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_nodes_preempted_resume_like_undisturbed_and_evaluate(cluster, tmp_path, method):
    recipe, keys = METHODS[method]
    reference = Run(tmp_path / "reference", "eval.enabled=false", base=recipe)
    try:
        assert reference.wait_ended(reference.pretrain) == "COMPLETED", reference.logs()[-3000:]
    finally:
        reference.cancel()
    run = Run(tmp_path / "preempted", base=recipe)
    try:
        run.wait_step(4)
        preempt()
        run.wait_running_again(0)
        check_completed_like_reference(run, reference, stops_expected=1, keys=keys, steps=STEPS)
        assert "node 1/2" in run.logs()
        record = json.loads((run.run_dir / "jobs.json").read_text())
        assert record["nodes"] == 2
        config = (run.run_dir / "config.yaml").read_text()
        assert f"name: {method}" in config
        metrics = json.loads((run.run_dir / "eval" / "metrics.json").read_text())
        assert 0.0 <= metrics["clustering.8.miou"] <= 1.0
        if method == "maskcontrast":  # its own protocol ran in the chained eval
            assert 0.0 <= metrics["saliency.iou"] <= 1.0
            assert "mask_kmeans.miou" in metrics or "mask_kmeans.skipped" in metrics
    finally:
        run.cancel()
