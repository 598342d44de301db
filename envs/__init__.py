"""TorchRL environments and the task zoo for meta-training GANNO agents."""
