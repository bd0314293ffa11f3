"""iarn_jax: Interacting Attention-gated Recurrent Networks for recommendation in JAX/Flax."""
__version__ = "0.1.0"
