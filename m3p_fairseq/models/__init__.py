from .m3p import M3PModel  # noqa: F401
