"""The built-in dataset (`r2scp synth`): MUSIC-AVQA- or AVQA-format annotations over real mp4 clips.

scenes     latent scenes as plain data (who plays what, where, when, how loud); imports no sibling
sound      renders a scene's audio track
picture    renders a scene's frames
questions  MUSIC-AVQA's templates answered from a scene
avqa       AVQA-style multiple-choice questions from a scene
dataset    the stage: samples scenes, asks questions, renders clips, writes the dataset directory
"""
