"""`python -m unish_model.train ...`: the training command (also `unish train`), torchrun-ready."""
from unish_model.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
