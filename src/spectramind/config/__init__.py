"""Configuration: Hydra composition, JSON-Schema validation, run hashes and snapshots."""
