"""Reading and keeping weights: the loader, the component and disk caches, save, bytes and the report."""

from .load import load
