"""Meta-training, evaluation and export of GANNO agents (MAPPO/IPPO in TorchRL)."""
