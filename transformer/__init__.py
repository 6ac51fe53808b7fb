"""The encoder-decoder Transformer: model, data, training, decoding.

Importing the package tunes glibc's malloc for XLA:CPU first (see ``host_memory``): it has to
happen before JAX starts threads.
"""

from transformer import host_memory

MALLOC_TUNED = host_memory.keep_freed_memory()
