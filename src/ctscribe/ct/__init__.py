"""Reading CT for inference: DICOM series and NIfTI volumes as HU slices, and the CT windows that turn
them into display greys. ``predict`` and ``serve`` read uploads through it; ``prepare`` does not
(MedTrinity's images are already windowed)."""
