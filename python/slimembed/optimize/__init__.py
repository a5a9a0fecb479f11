"""Graph rewrites that make an FP32 ONNX graph fast or small: attention fusion (``fusion``) and
the INT8 and FP16 variants (``quantize``), with the probe texts and cosines they are checked by
(``fidelity``).

They need numpy, ONNX Runtime and the ``onnx`` package, never PyTorch: the export pipeline runs
them on the graphs it writes, and the runtime on graphs taken from the Hub (fused at first load,
``slimembed quantize``). ``onnx`` comes with the ``quantize`` extra
(``pip install 'slimembed[quantize]'``); ``import slimembed`` imports none of this.
"""
