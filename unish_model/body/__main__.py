"""`python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz`: convert the official SMPL pickle once."""
import sys

from unish_model.body.smpl_pickle import main

sys.exit(main(sys.argv[1:]))
