"""r2scp: Retrieving to Recover (R2ScP) for audio-visual question answering with missing modalities."""

__version__ = "0.1.0"
