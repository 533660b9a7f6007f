"""What a model folder holds, read without loading a weight: roots, hub cache, headers, variants, configs."""

from .inspect_model import inspect_model
