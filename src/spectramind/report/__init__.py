"""Ablation sweeps (many ordinary train runs) and the leaderboard rebuilt from their run folders."""
