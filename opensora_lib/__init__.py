"""opensora_lib: a readable re-implementation of Open-Sora 1.2 (STDiT3, video VAE, rectified flow)."""

__version__ = "0.1.0"
