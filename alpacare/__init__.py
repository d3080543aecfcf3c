"""alpacare: the AlpaCare medical instruction-tuning pipeline as one Hydra app."""

__version__ = "0.1.0"
