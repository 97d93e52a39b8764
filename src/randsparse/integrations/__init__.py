"""Glue to the training tools researchers already use; each module needs its own optional extra.

`randsparse.integrations.lightning` (``pip install 'randsparse[lightning]'``): the `RandomPruning`
callback for PyTorch Lightning. Nothing here is imported by ``import randsparse``.
"""
