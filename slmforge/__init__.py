"""slmforge: adapt, export, bundle and run small language models on edge devices."""

__version__ = "0.1.0"
