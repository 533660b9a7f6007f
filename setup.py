"""The repository root is the package `pipequant` (ComfyUI imports this folder by path): every folder
below it with an __init__.py is a sub-package, found by setuptools rather than listed by hand."""

from setuptools import find_packages, setup

if __name__ == "__main__":  # the build runs this file as __main__; the installed copy never does
    setup(packages=["pipequant"] + [f"pipequant.{p}" for p in find_packages(exclude=["tests*", "bench*", "build*"])])
