"""The evaluation benchmarks' on-disk layouts (Bonn, EMDB, RICH): readers (raw arrays out), and next to each
reader its glue for the protocols in `unish_model.eval` (layout checks that name what is missing, person boxes,
ground truth); `safe_unpickle` reads EMDB's pickles without running code."""

from unish_model.benchmarks.bonn import BONN_SEQUENCES, BonnSequence, list_bonn, read_bonn_sequence, read_depth_png
from unish_model.benchmarks.emdb import EmdbSequence, list_emdb, read_emdb_pickle
from unish_model.benchmarks.layout import BenchmarkLayoutError
from unish_model.benchmarks.rich import RichSequence, read_rich_cameras, read_rich_labels, smplx_to_smpl_vertices
from unish_model.benchmarks.safe_unpickle import RestrictedUnpickler, UnsafePickleError, safe_load, safe_load_path

__all__ = [
    "BONN_SEQUENCES",
    "BenchmarkLayoutError",
    "BonnSequence",
    "EmdbSequence",
    "RestrictedUnpickler",
    "RichSequence",
    "UnsafePickleError",
    "list_bonn",
    "list_emdb",
    "read_bonn_sequence",
    "read_depth_png",
    "read_emdb_pickle",
    "read_rich_cameras",
    "read_rich_labels",
    "safe_load",
    "safe_load_path",
    "smplx_to_smpl_vertices",
]
