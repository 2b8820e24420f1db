"""``python -m lco.bench`` (``make bench``): speed and memory benchmarks of issue 7, written to
``experiments/bench/results.{md,json}`` on the machine that runs them. One module per part: ``loop`` (a, against a plain
PyTorch loop), ``peers`` (b and d, against sentence-transformers), ``memory`` (c, GradCache); ``gpu`` is the
real-size GPU benchmark (``python -m lco.bench.gpu``).
"""
