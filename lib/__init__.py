"""What the top-level scripts stand on: errors, checkpoint files, the precision choice, the face
Swin-T backbone and the synthetic demo faces. Imports nothing from the top level."""
