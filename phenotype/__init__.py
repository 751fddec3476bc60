"""Per-cell phenotyping and counting in co-cultures (`python -m phenotype cv`)."""
