"""The ``autoglm`` command line."""
