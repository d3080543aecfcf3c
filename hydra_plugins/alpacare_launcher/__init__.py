"""``hydra/launcher=slurm``'s launcher, where Hydra looks for launchers.

Hydra instantiates a launcher only from the ``hydra_plugins`` namespace package; the launcher
itself is alpacare/training/slurm_launcher.py (its docstring says what it adds to
hydra-submitit-launcher's).
"""

from alpacare.training.slurm_launcher import FailFastSlurmLauncher


class SlurmLauncher(FailFastSlurmLauncher):
    """alpacare.training.slurm_launcher.FailFastSlurmLauncher, registered for Hydra."""
