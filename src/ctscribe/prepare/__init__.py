"""From MedTrinity-25M to fine-tuning data: sources, the CT filter, caption cleaning, the one image
path, near-duplicate detection, splits and the writer that `ctscribe prepare` runs."""
