"""The quick protocol on the lent GPU machine: what travels there, and the one command that runs there.

- :mod:`benchmarks.device.pack` (``python -m benchmarks.device pack``, here): CIFAR-10 as lossless, sha256-checked
  parts and the wheels the machine lacks, in the git-ignored ``.device/``, within the 64 MiB a call may carry; it
  prints the exact call.
- :mod:`benchmarks.device.run` (``bash benchmarks/device_run.sh`` there, ``python -m benchmarks.device run``):
  training, evaluation, reports and the speed benchmark against a 9-minute deadline, results into $OUT.
- :mod:`benchmarks.device.cpu_check`: the CPU checks behind the quick preset (bf16 against fp32, the schedule).

``benchmarks/RESULTS.md`` ("Quick preset") has the design, the time estimate and the steps.
"""
