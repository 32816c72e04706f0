"""What train.py and evaluate.py use beyond the method: the batch pipeline, the run records, the
dataset check, seed summaries, diagnostics, Grad-CAM and export."""
