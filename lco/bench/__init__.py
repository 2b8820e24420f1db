"""``python -m lco.bench`` (``make bench``): speed and memory benchmarks of issue 7, written to
``experiments/bench/results.{md,json}`` on the machine that runs them. One module per part: ``loop`` (a).
"""
