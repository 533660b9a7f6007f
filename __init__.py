"""PipeQuant — ComfyUI entry point. ComfyUI imports this folder by path, so imports are relative."""
WEB_DIRECTORY = "./web"

# pytest imports this file on its own (no parent package) when the checkout's folder name is not
# a valid package name; there is nothing to register then.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    # The editor's HTTP routes; register() does nothing outside a ComfyUI server (tests, CLI).
    from .nodes import routes as _routes

    _routes.register()

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
