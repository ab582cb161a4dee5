"""The trainable semantic model: pretrained encoder, light decoder, trainer."""
