"""Training methods: each decides which parameters of an ``Embedder`` train, and nothing else.

``METHODS`` maps the name written in ``lco_embedding.json`` to the class that can load what it saved.
"""

from lco.methods.clip import ClipStyle
from lco.methods.full import FullFineTune
from lco.methods.linear_probe import LinearProbe
from lco.methods.lora import LoRA

METHODS = {cls.name: cls for cls in (LoRA, FullFineTune, LinearProbe, ClipStyle)}
