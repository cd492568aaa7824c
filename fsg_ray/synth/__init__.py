"""Dataset synthesis without Ray: what a job is asked (options), how a seed becomes an image (render),
how images become Parquet shards (shards), and the records that make a dataset resumable (manifest)."""
