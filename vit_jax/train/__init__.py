"""Training, one job per module: steps (the jitted steps and TrainState), evaluation
(host loops over the validation split), preemption, checkpoint, metrics_io, loop (the
epochs of a run), and what the step is built from: losses, optim, teacher."""
