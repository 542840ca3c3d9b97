"""One module per curation stage; each a plain function on paths and arrays."""
