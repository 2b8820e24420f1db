"""Training methods: each decides which parameters of an ``Embedder`` train, and nothing else."""
