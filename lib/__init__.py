"""What train.py and evaluate.py run on: the batches, devices and precision, the processes under
torchrun, the run's files, the reports, the errors, the dataset readers and the face Swin-T."""
