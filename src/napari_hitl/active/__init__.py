"""What to ask the human next: uncertainty, ranking, superpixels, pseudo-labels."""
