"""PipeQuant — ComfyUI entry point. ComfyUI imports this folder by path, so imports are relative."""

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def __getattr__(name: str):
    """The nodes on first use: ComfyUI asks for NODE_CLASS_MAPPINGS right after importing the folder,
    while `python -m pipequant validate` and the resolver never do, so they skip torch & diffusers' imports."""
    # pytest imports this file on its own (no parent package) when the checkout's folder name is not
    # a valid package name; there is nothing to register then.
    if name not in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS") or not __package__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes import routes as _routes

    _routes.register()  # the editor's HTTP routes; does nothing outside a ComfyUI server (tests, CLI)
    globals().update(NODE_CLASS_MAPPINGS=NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS=NODE_DISPLAY_NAME_MAPPINGS)
    return globals()[name]
