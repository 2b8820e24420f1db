"""``python -m lco.bench`` (``make bench``): speed and memory benchmarks of issues 7 and 19, written to
``experiments/bench/results.{md,json}`` on the machine that runs them. One module per part: ``loop`` (a, against a
plain PyTorch loop), ``peers`` (b and d, against sentence-transformers), ``memory`` (c, GradCache), ``packing`` (e,
padding-free packing); ``lengths`` draws the All-NLI-shaped and uniform-length triplets; ``gpu`` is the real-size
GPU benchmark (``python -m lco.bench.gpu``).
"""
