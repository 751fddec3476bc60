"""Stable Diffusion pieces shared by `lora` and `generate`: loading the base model and its hash,
the tiny offline smoke model, LoRA file formats (diffusers, kohya/A1111), original-layout
(LDM) checkpoints and the samplers.

Never imports TensorFlow or Keras: transformers is told not to look for them.
"""
import os

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_TORCH", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
