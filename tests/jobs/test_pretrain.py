"""jobs/pretrain.py: SLURM's view of the job becomes MLflow tags."""

from jobs.pretrain import slurm_tags


def test_slurm_tags_from_the_environment():
    env = {
        "SLURM_JOB_ID": "93",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_PARTITION": "batch",
        "LOCAL_WORLD_SIZE": "4",
    }
    assert slurm_tags(env) == {
        "slurm.pretrain_job_id": "93",
        "slurm.restart_count": "0",  # SLURM sets it only after a requeue
        "slurm.nodes": "2",
        "slurm.nodelist": "n[1-2]",
        "slurm.partition": "batch",
        "processes_per_node": "4",
    }
    assert slurm_tags({**env, "SLURM_RESTART_COUNT": "3"})["slurm.restart_count"] == "3"
    assert slurm_tags({}) == {}
