"""The on-disk format: clip records, WebDataset shards, the Parquet index, release manifests."""
