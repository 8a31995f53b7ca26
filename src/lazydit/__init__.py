"""lazydit: learned lazy sampling (LazyDiT, AAAI 2025) for Diffusion Transformers."""
__version__ = "0.1.0"
