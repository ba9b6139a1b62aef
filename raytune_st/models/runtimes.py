"""The inference runtimes a model may run on besides torch (model.backend), and what each needs.

Light on purpose: the config checks it on the driver, where torch need not be imported;
raytune_st.models.backends runs the runtimes.
"""

# backend -> the modules it needs installed, the runtime itself first.
RUNTIMES = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino",)}
