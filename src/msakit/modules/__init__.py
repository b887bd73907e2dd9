"""Shared building blocks: encoders, attention, gates, losses, label generation, distillation."""
