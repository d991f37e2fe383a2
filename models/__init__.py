"""The model's life: data, training, evaluation, export, quantization, and the bundled artifact's contract.

``models.contract`` (the only module serving may import), ``models.data``, ``models.metrics``, ``models.cli_args``,
``models.predictors``, ``models.evaluate`` and ``models.quantize`` are light (numpy/Pillow/pyarrow/onnxruntime);
training, export and checkpoint evaluation import torch and need the ``train`` extra.
"""
