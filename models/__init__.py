"""The model's life: data, training, evaluation, export, quantization, and the bundled artifact's contract.

Only ``models.contract``, ``models.data`` and ``models.metrics`` are light (numpy/Pillow/pyarrow);
training, export and checkpoint evaluation import torch lazily and need the ``train`` extra.
"""
