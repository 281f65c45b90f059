"""The MiniLM example: a hand-written English corpus for the all-MiniLM-L6-v2 embedding model."""
