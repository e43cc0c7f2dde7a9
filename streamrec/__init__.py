"""streamrec: the kernel every part shares (settings, events, the Kafka boundary, the join, data, the text encoder).

Importing it starts nothing: no Ray, no Kafka connection, no model load.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
