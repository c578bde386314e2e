"""Built-in recipes; importing this package registers them (``template.py`` is an example, not registered)."""
from ganprune.train.recipes import cyclegan, dcd, density, dgl, gcc, omgd, output_l1, pix2pix, selfsup  # noqa: F401
