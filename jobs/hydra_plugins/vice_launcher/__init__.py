"""Hydra launcher plugin `vice_slurm` (conf/hydra/launcher/vice_slurm.yaml).

Found by Hydra's plugin scan because jobs/launch.py puts `jobs/` on sys.path, which makes
`jobs/hydra_plugins/` part of the `hydra_plugins` namespace package.
"""
