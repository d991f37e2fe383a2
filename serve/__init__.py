"""The emotion-detection service: a Ray Serve graph (ingress -> preprocessor -> batched ONNX model).

Import what you need from the module that owns it (``serve.app.build_app``, ``serve.core.inference.OnnxClassifier``);
this package imports nothing heavy, so ``emotion predict`` never loads Ray.
"""
