"""Where the pipeline reads and writes: local paths and Google Cloud Storage, through one layer."""
