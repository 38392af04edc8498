"""flask-mailoauth's benchmarks: ``.venv/bin/python -m benchmarks.run [--quick]``.

Every figure is reported next to a baseline measured in the same run on the same machine, and
as a ratio to it: the machine is shared and noisy, so absolute times alone prove nothing. See
``benchmarks/README.md``.
"""
