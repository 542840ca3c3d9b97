"""UniSH in PyTorch: scene branch, human branch, AlignNet, geometry, losses, metrics, conversion."""
