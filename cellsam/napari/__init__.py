"""napari plugin: one dock widget (`_widget.CellSAMWidget`) for human-in-the-loop labelling.

The widget is a thin Qt layer over `cellsam.labelling.LabellingSession`; `_layers` holds
the napari-coordinate conversions (no Qt). Nothing in cellsam imports this package; napari
finds it through the `napari.manifest` entry point (`napari.yaml`).
"""
