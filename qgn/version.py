"""The version of qgn, in a module of its own so that any module can read it without importing the
package's ``__init__`` (whose :func:`qgn.load` reaches most of qgn). Keep it equal to pyproject.toml's."""

__version__ = "0.1.0"
