"""sknet: SKNet-50 training, evaluation and export for CIFAR-10 on Ascend (and CPU).

This package holds all the logic; the Prefect tasks and flows only orchestrate it.
"""

__version__ = "0.1.0"
