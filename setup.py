"""The wheel holds one top-level package, `zoo`: the repository's export/, handlers/ and cli.py become
zoo.export, zoo.handlers and zoo.cli. Everything else about the package is in pyproject.toml."""
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """cli.py, the repository's one typer app at the top level, is zoo/cli.py in the wheel."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [*modules, ("zoo", "cli", "cli.py")] if package == "zoo" else modules


setup(
    packages=[*find_packages(include=["zoo", "zoo.*"]), "zoo.export", "zoo.handlers"],
    # handlers/ has no __init__.py on purpose: inside a .mar its files are top-level modules.
    package_dir={"zoo.export": "export", "zoo.handlers": "handlers"},
    cmdclass={"build_py": BuildPy},
)
