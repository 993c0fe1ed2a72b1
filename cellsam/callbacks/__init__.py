"""Lightning callbacks: `preemption` (SLURM-safe checkpoints and requeue) and
`segmentation_metrics` (full-pipeline F1 / DeepCell / COCO per dataset during val/test).

Import them from their modules; this package imports nothing so that loading one callback
does not pull in the others' dependencies.
"""
