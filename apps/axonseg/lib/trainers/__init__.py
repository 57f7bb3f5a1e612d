"""Training: data loading, the plain training loop, the MONAI Label train task and the CLI."""
