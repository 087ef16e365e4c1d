"""Self-supervised pretraining with iBOT: masked image modelling + self-distillation."""
