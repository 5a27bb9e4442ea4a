"""The toolkit's version: its own module, so that modules inside the package never import the package facade."""

__version__ = "0.1.0"
