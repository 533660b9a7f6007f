"""PipeQuant — ComfyUI entry point. ComfyUI imports this folder by path, so imports are relative."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

try:  # Inside a ComfyUI server: register the editor's HTTP routes. Elsewhere (tests, CLI): skip.
    from . import routes as _routes

    _routes.register()
except ImportError:
    pass

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
