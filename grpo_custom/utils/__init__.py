"""Generic helpers below every layer: the package version and loading a file as a module."""
