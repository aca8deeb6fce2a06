"""The reproducible DreamFusion lab: text-to-3D with Score Distillation Sampling as a Snakemake pipeline."""

__version__ = "0.1.0"
