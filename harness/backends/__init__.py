"""Backends: the API (``base``), the registry (``registry``), the emulated twins (``emulated``),
shared preprocessing (``common``) and one module per kernel library. Import the submodules."""
