"""PipeQuant — ComfyUI entry point. ComfyUI imports this folder by path, so imports are relative."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

# The editor's HTTP routes; register() does nothing outside a ComfyUI server (tests, CLI).
from . import routes as _routes

_routes.register()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
