"""Pre-flight checks against captured `sinfo` text: exact error texts, no cluster needed."""

import sys

import pytest

import jobs.preflight
from jobs.preflight import (
    check_cluster,
    check_data,
    check_output_dir,
    check_superpixels,
    parse_gpus,
    parse_sinfo,
    parse_time_limit,
    resolve_partition,
    slic_problem,
)
from vice.hydra_schema import to_config

# `sinfo --noheader --Node --format=%N|%P|%c|%G|%m|%l|%a` on tools/slurm_cluster.py's cluster
LOCAL_SINFO = """\
n1|batch*|2|(null)|21695|infinite|up
n1|urgent|2|(null)|21695|infinite|up
n2|batch*|2|(null)|21695|infinite|up
n2|urgent|2|(null)|21695|infinite|up
"""
# A GPU cluster: heterogeneous nodes, a time-limited partition, no default partition.
GPU_SINFO = """\
g1|gpu|64|gpu:a100:8(S:0-1)|512000|2-00:00:00|up
g2|gpu|64|gpu:a100:8(S:0-1)|512000|2-00:00:00|up
g3|gpu|32|gpu:v100:4,mps:100|256000|2-00:00:00|up
c1|short|16|(null)|64000|30:00|up
"""


def cfg(**sections):
    return to_config(sections)


def test_parse_sinfo_local_cluster():
    parts = parse_sinfo(LOCAL_SINFO)
    assert sorted(parts) == ["batch", "urgent"]
    batch = parts["batch"]
    assert batch.default and not parts["urgent"].default
    assert [n.name for n in batch.nodes] == ["n1", "n2"]
    assert [(n.cpus, n.gpus, n.memory_mb) for n in batch.nodes] == [(2, 0, 21695)] * 2
    assert batch.time_limit_min is None and not batch.has_gpus
    assert resolve_partition(None, parts).name == "batch"


def test_parse_sinfo_gpu_cluster():
    gpu = parse_sinfo(GPU_SINFO)["gpu"]
    assert gpu.has_gpus and [n.gpus for n in gpu.nodes] == [8, 8, 4]
    assert gpu.time_limit_min == 2880
    assert parse_sinfo(GPU_SINFO)["short"].time_limit_min == 30


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("gpu:2,mps:100", 2), ("mps:4", 0)],
)
def test_parse_gpus(gres, gpus):
    assert parse_gpus(gres) == gpus


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("infinite", None), ("UNLIMITED", None), ("30:00", 30), ("2:00:00", 120), ("1-00:00:00", 1440),
     ("1-02:30:30", 1591), ("45", 45)],
)  # fmt: skip
def test_parse_time_limit(text, minutes):
    assert parse_time_limit(text) == minutes


def test_valid_config_passes():
    parts = parse_sinfo(LOCAL_SINFO)
    assert check_cluster(cfg(trainer={"nodes": 2, "gpus_per_node": 2}), parts) == []


def test_unknown_partition():
    errors = check_cluster(cfg(cluster={"partition": "gpu"}), parse_sinfo(LOCAL_SINFO))
    assert errors == [
        "invalid config value cluster.partition='gpu': no such partition; "
        "set one of ['batch', 'urgent'] (or null for the default, 'batch')"
    ]


def test_no_default_partition():
    errors = check_cluster(cfg(), parse_sinfo(GPU_SINFO))
    assert errors == [
        "invalid config value cluster.partition=None: the cluster has no default partition; "
        "set one of ['gpu', 'short']"
    ]


def test_too_many_nodes():
    errors = check_cluster(cfg(trainer={"nodes": 3}), parse_sinfo(LOCAL_SINFO))
    assert errors == [
        "invalid config value trainer.nodes=3: partition 'batch' has 2 nodes; "
        "set trainer.nodes to at most 2 or pick another cluster.partition"
    ]


def test_too_many_processes_per_cpu_node():
    errors = check_cluster(cfg(trainer={"gpus_per_node": 3}), parse_sinfo(LOCAL_SINFO))
    assert errors == [
        "invalid config value trainer.gpus_per_node=3: the nodes of partition 'batch' have at "
        "most 2 CPUs and no GPUs (one process per CPU at most); "
        "set trainer.gpus_per_node to at most 2"
    ]


def test_too_many_gpus_and_too_few_big_nodes():
    parts = parse_sinfo(GPU_SINFO)
    errors = check_cluster(cfg(trainer={"gpus_per_node": 16}, cluster={"partition": "gpu"}), parts)
    assert errors == [
        "invalid config value trainer.gpus_per_node=16: the nodes of partition 'gpu' have at "
        "most 8 GPUs; set trainer.gpus_per_node to at most 8"
    ]
    errors = check_cluster(
        cfg(trainer={"nodes": 3, "gpus_per_node": 8}, cluster={"partition": "gpu"}), parts
    )
    assert errors == [
        "invalid config value trainer.nodes=3: only 2 nodes of partition 'gpu' have 8 GPUs "
        "(trainer.gpus_per_node); set trainer.nodes to at most 2 or lower trainer.gpus_per_node"
    ]


def test_cuda_on_cpu_partition():
    errors = check_cluster(cfg(trainer={"device": "cuda"}), parse_sinfo(LOCAL_SINFO))
    assert errors == [
        "invalid config value trainer.device='cuda': partition 'batch' has no GPUs; "
        "use trainer.device=auto (CPU processes) or a GPU cluster.partition"
    ]


def test_cpus_memory_and_eval_nodes():
    errors = check_cluster(
        cfg(cluster={"cpus_per_task": 8, "mem_gb": 64, "eval_nodes": 3}), parse_sinfo(LOCAL_SINFO)
    )
    assert errors == [
        "invalid config value cluster.eval_nodes=3: partition 'batch' has 2 nodes; "
        "set cluster.eval_nodes to at most 2",
        "invalid config value cluster.cpus_per_task=8: the nodes of partition 'batch' have 2 "
        "CPUs; set cluster.cpus_per_task to at most 2 (or null)",
        "invalid config value cluster.mem_gb=64.0: the nodes of partition 'batch' have 21.2 GB; "
        "set cluster.mem_gb to at most 21 (or null)",
    ]


def test_time_limit_of_partition():
    errors = check_cluster(
        cfg(cluster={"partition": "short", "time_min": 60}, trainer={"checkpoint_minutes": 10}),
        parse_sinfo(GPU_SINFO),
    )
    assert errors == [
        "invalid config value cluster.time_min=60: partition 'short' allows at most 30 min; "
        "set cluster.time_min to at most 30",
        "invalid config value cluster.eval_time_min=60: partition 'short' allows at most 30 "
        "min; set cluster.eval_time_min to at most 30",
    ]


def test_time_limit_shorter_than_checkpoint_interval():
    errors = check_cluster(cfg(cluster={"time_min": 10}), parse_sinfo(LOCAL_SINFO))
    assert errors == [
        "invalid config value cluster.time_min=10: shorter than one checkpoint interval "
        "(trainer.checkpoint_minutes=30), the job would end before its first checkpoint; "
        "set cluster.time_min to at least 30 or trainer.checkpoint_minutes to at most 10"
    ]
    ok = cfg(cluster={"time_min": 10}, trainer={"checkpoint_minutes": 10})
    assert check_cluster(ok, parse_sinfo(LOCAL_SINFO)) == []


def test_output_dir(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError) as err:
        check_output_dir(tmp_path / "file" / "sweep")
    assert str(err.value) == (
        f"invalid config value hydra.sweep.dir='{tmp_path}/file/sweep': {tmp_path}/file is not "
        "a directory; set hydra.sweep.dir to a writable directory that every node sees"
    )
    with pytest.raises(ValueError, match=r"hydra.sweep.dir='/proc/vice/sweep': cannot write in "):
        check_output_dir("/proc/vice/sweep")  # even root cannot write there


def test_missing_data_root(tmp_path):
    with pytest.raises(ValueError, match=f"COCO data set at '{tmp_path}/nothere'"):
        check_data(cfg(data={"dataset": "coco", "root": str(tmp_path / "nothere")}))


def test_slic_probe_passes_with_the_installed_fast_slic():
    assert slic_problem() is None
    check_data(cfg())  # the default (synthetic, slic) job passes every data check


def test_slic_probe_names_a_crash_and_a_failure():
    segfault = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert slic_problem(sys.executable, segfault) == "crashed with SIGSEGV on a 48x48 image"
    missing = "import fast_slic_not_installed"
    assert slic_problem(sys.executable, missing) == (
        "failed: ModuleNotFoundError: No module named 'fast_slic_not_installed'"
    )


def test_check_superpixels_error_names_key_and_fixes(monkeypatch):
    monkeypatch.setattr(jobs.preflight, "slic_problem", lambda: "crashed with SIGSEGV on x")
    with pytest.raises(ValueError) as err:
        check_superpixels(cfg())
    text = str(err.value)
    assert text.startswith(
        "invalid config value data.superpixels.method='slic': fast-slic crashed with SIGSEGV "
        f"on x under {sys.executable}; rebuild it there (pip install cython"
    )
    assert "--no-build-isolation" in text
    assert text.endswith("or use data.superpixels.method=grid (the ablation, not ViCE)")
    # The grid needs no fast-slic: no probe, no error.
    check_superpixels(cfg(data={"superpixels": {"method": "grid"}}))


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"tracking": {"uri": "s3://bucket/mlruns"}},
            "invalid config value tracking.uri='s3://bucket/mlruns': unsupported scheme 's3'",
        ),
        (
            {"tracking": {"uri": "sqlite:////proc/nope/mlflow.db"}},
            "invalid config value tracking.uri='/proc/nope'",
        ),
        (
            {"data": {"superpixels": {"cache_dir": "/proc/nope"}}},
            "invalid config value data.superpixels.cache_dir='/proc/nope'",
        ),
    ],
)
def test_environment_problems_name_the_key(sections, message):
    from jobs.preflight import check_environment

    with pytest.raises(ValueError) as err:
        check_environment(cfg(**sections))
    assert str(err.value).startswith(message), str(err.value)


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    import torch

    from jobs.preflight import check_environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"trainer\.device='cuda': no CUDA device is visible"):
        check_environment(cfg(trainer={"device": "cuda"}))


def test_an_unwritable_run_dir_is_named(tmp_path):
    from jobs.preflight import check_environment

    check_environment(cfg(), tmp_path / "new" / "run")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match=r"hydra\.run\.dir='/proc/nope/run'"):
        check_environment(cfg(), "/proc/nope/run")


def test_eval_split_errors_name_the_eval_keys():
    with pytest.raises(ValueError, match=r"data\.eval_split='test': the synthetic data set has"):
        check_data(cfg(data={"eval_split": "test"}))
    with pytest.raises(ValueError, match=r"eval\.linear_train_split='test': the synthetic"):
        check_data(cfg(eval={"linear_train_split": "test"}))


# `scontrol show config` / `scontrol show partition batch` on tools/slurm_cluster.py's cluster
SCONTROL_CONFIG = "JobRequeue = 1\nKillWait                = 30 sec\nKillOnBadExit = 0\n"
SCONTROL_PARTITION = (
    "PartitionName=batch\n   AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL\n"
    "   DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=20 Hidden=NO\n"
    "   OverSubscribe=NO\n   OverTimeLimit=NONE PreemptMode=REQUEUE\n"
)


def test_parse_stop_timing():
    from jobs.preflight import parse_kill_wait, parse_partition_timing

    assert parse_kill_wait(SCONTROL_CONFIG) == 30
    assert parse_kill_wait("") is None
    assert parse_partition_timing(SCONTROL_PARTITION) == (20, "REQUEUE")
    assert parse_partition_timing("PartitionName=urgent GraceTime=0 PreemptMode=OFF") == (0, "OFF")


def test_save_window_errors_name_the_users_key_and_warn_about_the_clusters():
    from jobs.preflight import StopTiming, save_window_problems

    timing = StopTiming(kill_wait_s=30, grace_time_s=20, preempt_mode="REQUEUE")
    # a 4 s save: needs 1.5 x 4 + 10 = 16 s; every window holds it
    assert save_window_problems(cfg(), timing, 4.0, 300 * 2**20) == ([], [])
    # a 40 s save: 70 s; signal_delay_s=60 is the user's to change: an error
    errors, warnings = save_window_problems(cfg(), timing, 40.0, 2**30)
    measured = (
        "a stop checkpoint (1024 MB) took 40.0 s to write here; with the rest of a step allow 70 s"
    )
    assert errors == [
        f"invalid config value cluster.signal_delay_s=60: {measured}; "
        "set cluster.signal_delay_s to at least 70"
    ]
    lost = (
        "the stop checkpoint is lost and the run continues from its last periodic one "
        "(trainer.checkpoint_minutes=30 bounds the loss)"
    )
    assert warnings == [
        f"the default partition: GraceTime=20 s (PreemptMode=REQUEUE) is shorter than the save: "
        f"{measured}; on a preemption {lost}. A partition with a longer GraceTime "
        "(cluster.partition) keeps it.",
        f"KillWait=30 s is shorter than the save: {measured}; after `scontrol requeue` by hand "
        f"{lost}. Stop with `scancel --signal=USR2 <job>` instead: the job saves, then "
        "requeues itself.",
    ]
    roomy = cfg(cluster={"signal_delay_s": 90, "partition": "gpu"})
    never_preempted = StopTiming(kill_wait_s=120, grace_time_s=0, preempt_mode="OFF")
    assert save_window_problems(roomy, never_preempted, 40.0, 2**30) == ([], [])
    # a window longer than the job: both keys named
    short = cfg(cluster={"time_min": 1, "signal_delay_s": 30}, trainer={"checkpoint_minutes": 1})
    errors, _ = save_window_problems(short, never_preempted, 40.0, 2**30)
    assert errors[0].endswith("at least 70 and cluster.time_min above 2")


def test_measure_save_writes_a_real_checkpoint_and_leaves_nothing(tmp_path):
    from jobs.preflight import measure_save
    from vice.methods import build_method

    config = cfg()
    seconds, size = measure_save(config, tmp_path)
    params = sum(p.numel() for p in build_method(config).parameters() if p.requires_grad)
    assert seconds > 0 and size > 4 * params * 2  # weights and one momentum, float32
    assert list(tmp_path.iterdir()) == []


def test_the_probes_training_split_is_scanned_like_the_eval_split(tmp_path):
    """The linear probe trains on eval.linear_train_split: its labels are read at launch too,
    and an error names that key and the file."""
    from PIL import Image

    from tests.data.datasets.fixtures import make_voc

    root = make_voc(tmp_path / "voc")
    config = cfg(
        data={"dataset": "voc", "root": str(root), "split": "train", "eval_split": "val"},
        eval={"linear_train_split": "train"},
    )
    check_data(config)  # a sound tree passes
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for image_id in ids:  # every train label map resized: any sample finds one
        Image.new("L", (5, 5)).save(root / "SegmentationClass" / f"{image_id}.png")
    with pytest.raises(ValueError) as err:
        check_data(config)
    message = str(err.value)
    assert message.startswith("eval.linear_train_split='train': PASCAL VOC label map ")
    assert "SegmentationClass" in message and "is 16x12: a label map must match" in message
