"""Cloud TPU pod launcher."""
