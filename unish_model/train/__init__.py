"""Training UniSH: clips streamed from shards (`data`, `sources`), and the loop."""
