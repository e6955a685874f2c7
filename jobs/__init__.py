"""Everything that knows the cluster: entry points, SLURM jobs, the Hydra launcher plugin.

A package so that submitit pickles the job callables by reference (`jobs.slurm.PretrainTask`)
and a job imports them from the code snapshot on its PYTHONPATH.
"""
