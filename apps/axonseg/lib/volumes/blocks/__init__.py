"""Block-wise compute over a stored volume: plan, windows, components and the steps of a whole-volume job."""
