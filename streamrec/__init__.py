"""streamrec: the kernel every part shares (settings, events, data, the text encoder, the CLI).

Importing it starts nothing: no Ray, no Kafka connection, no model load.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
