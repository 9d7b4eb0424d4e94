"""Execution speed-ups that leave the maths unchanged: CUDA-graph capture of training and attack steps
(`capture.py`) and the folded encoder that no-grad passes run (`eval_fold.py`)."""
