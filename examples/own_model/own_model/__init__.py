"""An example of a model of your own for scaling-assets (see models.py and docs/models.md)."""
