"""What exists: the backends and their options, the libraries' classes, measured figures, the machine."""
