"""Inside a trained ViT: token norms, attention, gates and sinks; reports and scoreboards."""
