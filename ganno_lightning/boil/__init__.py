"""BOIL: Bayesian optimisation over learning curves (Nguyen, Schulze & Osborne, NeurIPS 2020)."""
