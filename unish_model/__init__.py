"""UniSH in PyTorch: scene branch, human branch, AlignNet, geometry, losses, metrics, conversion; body models,
the window runner (`runner`) that `unish infer` and the evaluation (`eval/`) share, and the box helpers (`boxes`)
the labelling stages share with it."""
