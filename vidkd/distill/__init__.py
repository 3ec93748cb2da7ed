"""Distillation methods and the losses they are built from (`vidkd.distill.losses`)."""
