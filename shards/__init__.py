"""The on-disk format: clip records, WebDataset shards, the Parquet index, sidecar label versions, release
manifests, and the label codecs (`depth_codec`, `mask_codec`)."""
